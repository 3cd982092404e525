"""The video masked autoencoder: tubelet embedding, a plain ViT encoder that sees
only the visible tokens, a small ViT decoder, and an MSE loss on masked pixels.

Shapes in comments: B batch, T frames, H/W pixels, C channels, N tokens in the
clip, K visible tokens, D encoder width, E decoder width, P pixels per tubelet.
Nothing here knows about Ray or DeepSpeed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from contracts.shapes import MAEConfig, ViTShape


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # flash / memory-efficient kernels on GPU
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, shape: ViTShape):
        super().__init__()
        self.norm1 = nn.LayerNorm(shape.width)
        self.attn = Attention(shape.width, shape.heads)
        self.norm2 = nn.LayerNorm(shape.width)
        self.mlp = nn.Sequential(
            nn.Linear(shape.width, shape.mlp), nn.GELU(), nn.Linear(shape.mlp, shape.width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Tubelet embedding + learned position embedding + ViT blocks.

    The encoder is what evals load: `features()` runs it on every token of a
    clip and returns the output of a chosen block.
    """

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.encoder.width
        self.patch_embed = nn.Conv3d(cfg.channels, D, kernel_size=cfg.tubelet, stride=cfg.tubelet)
        # Initialised here, not in a later pass: under deepspeed.zero.Init a module's
        # parameters are partitioned as soon as its __init__ returns.
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, cfg.num_tokens, D), std=0.02))
        self.blocks = nn.ModuleList(Block(cfg.encoder) for _ in range(cfg.encoder.depth))
        self.norm = nn.LayerNorm(D)
        self.activation_checkpointing = False

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        # video: (B, C, T, H, W) float -> tokens (B, N, D) in (t, h, w) raster order
        x = self.patch_embed(video).flatten(2).transpose(1, 2)
        return x + self.pos_embed

    def run_blocks(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        for block in self.blocks[:upto]:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, video: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(video)  # (B, N, D)
        x = torch.gather(x, 1, visible_idx[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
        return self.norm(self.run_blocks(x))

    def feature_block(self, fraction: float) -> int:
        """Number of blocks to run for features at `fraction` of the depth (4DS reads ~95%)."""
        return max(1, min(len(self.blocks), round(fraction * len(self.blocks))))

    @torch.no_grad()
    def features(self, video: torch.Tensor, depth_fraction: float = 0.95) -> torch.Tensor:
        """All-token features (B, N, D) from the block at `depth_fraction` of the encoder."""
        return self.run_blocks(self.embed(video), upto=self.feature_block(depth_fraction))


class Decoder(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        E = cfg.decoder.width
        self.embed = nn.Linear(cfg.encoder.width, E)
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, E), std=0.02))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, cfg.num_tokens, E), std=0.02))
        self.blocks = nn.ModuleList(Block(cfg.decoder) for _ in range(cfg.decoder.depth))
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, cfg.patch_dim)

    def forward(
        self, latent: torch.Tensor, visible_idx: torch.Tensor, masked_idx: torch.Tensor
    ) -> torch.Tensor:
        # latent (B, K, D) -> pixel predictions for the masked tokens (B, N-K, P)
        B, M = masked_idx.shape
        x_vis = self.embed(latent) + _take(self.pos_embed.expand(B, -1, -1), visible_idx)
        x_mask = self.mask_token + _take(self.pos_embed.expand(B, -1, -1), masked_idx)
        # Token order does not matter to attention: visible first, masked after.
        x = torch.cat([x_vis, x_mask], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -M:]))  # only masked tokens reach the head


class VideoMAE(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        # (B, C, T, H, W) -> (B, N, P) with P ordered (t, h, w, C), tokens in (t, h, w) raster order
        B, C, T, H, W = video.shape
        t, h, w = self.cfg.tubelet
        x = video.reshape(B, C, T // t, t, H // h, h, W // w, w)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(B, (T // t) * (H // h) * (W // w), t * h * w * C)

    def forward(
        self, video: torch.Tensor, visible_idx: torch.Tensor, masked_idx: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error on the masked tubelets' pixels."""
        latent = self.encoder(video, visible_idx)
        pred = self.decoder(latent, visible_idx, masked_idx)
        target = _take(self.patchify(video), masked_idx)
        if self.cfg.norm_target:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return F.mse_loss(pred.float(), target.float())


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, F), idx (B, K) -> (B, K, F)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def random_masking(
    batch: int, cfg: MAEConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (not tube) masking: per clip, a uniformly random set of visible tokens.

    Returns (visible_idx (B, K), masked_idx (B, N-K)). Driven only by `generator`,
    so the data stream decides the masks and a resumed run sees the same ones.
    """
    noise = torch.rand(batch, cfg.num_tokens, generator=generator)
    order = noise.argsort(dim=1)
    K = cfg.num_visible
    return order[:, :K].contiguous(), order[:, K:].contiguous()


def normalize_video(video_uint8: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, C) uint8 -> (B, C, T, H, W) float in roughly [-1, 1]."""
    return video_uint8.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
