"""The attentive readout (4DS `AttentionReadout`, in the spirit of V-JEPA's attentive probe).

Queries cross-attend to every token of a clip: LayerNorm on the features plus a learned
temporal position encoding; queries are learned (one per output patch, frame or class
token) or computed from a conditioning input (Fourier features of a query point, a
first-frame box); residual projection, a 4x MLP with residual, then a linear output.

Shapes in comments: B clips, N tokens, D feature width, Q queries, C conditioning
dim, W readout width, O outputs per query, t/hw token grid time/space.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class AttentionReadout(nn.Module):
    def __init__(self, feat_dim: int, grid: tuple[int, int, int], out_dim: int, num_queries: int = 1,
                 cond_dim: int = 0, width: int = 128, heads: int = 4):
        super().__init__()
        assert width % heads == 0, f"readout width {width} must be a multiple of heads {heads}"
        self.grid, self.heads = grid, heads
        self.norm = nn.LayerNorm(feat_dim)
        self.time_embed = nn.Parameter(torch.zeros(1, grid[0], 1, feat_dim))  # one vector per token time step
        # Learned queries when nothing conditions them, else a projection of the conditioning input.
        self.query = nn.Parameter(torch.randn(1, num_queries, width) * 0.02) if cond_dim == 0 else None
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(feat_dim, width), nn.Linear(feat_dim, width)
        self.proj = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        # Zero output: an untrained head predicts the task's prior (the baseline for residual tasks).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, N, D) in (t, h, w) raster order; cond (B, Q, C) or None -> (B, Q, O)."""
        B, N, D = feats.shape
        t = self.grid[0]
        x = self.norm(feats).view(B, t, N // t, D) + self.time_embed  # (B, t, hw, D)
        x = x.view(B, N, D)
        q = self.query.expand(B, -1, -1) if self.cond is None else self.cond(cond)  # (B, Q, W)
        Q, W = q.shape[1], q.shape[2]

        def heads(z):  # (B, L, W) -> (B, h, L, W/h)
            return z.view(B, z.shape[1], self.heads, W // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(q)), heads(self.k(x)), heads(self.v(x)))  # (B, h, Q, W/h)
        q = q + self.proj(y.transpose(1, 2).reshape(B, Q, W))
        q = q + self.mlp(self.mlp_norm(q))
        return self.out(self.out_norm(q))


def fourier_features(x: torch.Tensor, bands: int = 8) -> torch.Tensor:
    """Coordinates in [0, 1] (..., K) -> (..., K * (2 * bands + 1)): raw value plus sin/cos at
    octave frequencies, so a linear layer can resolve positions finer than a token."""
    freqs = (2.0 ** torch.arange(bands, dtype=x.dtype, device=x.device)) * math.pi  # (bands,)
    ang = x[..., None] * freqs  # (..., K, bands)
    return torch.cat([x[..., None], ang.sin(), ang.cos()], -1).flatten(-2)
