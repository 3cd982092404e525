"""What a model costs, from its config alone: parameters, training FLOPs per
clip, and memory per GPU under ZeRO-3. Used by `sweep plan`, by the trainer's
MFU, and by reports' x axes. Exact closed forms, checked against real modules
and torch's FlopCounterMode in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.shapes import MAEConfig, ViTShape


def block_params(s: ViTShape) -> int:
    D, M = s.width, s.mlp
    attn = (D * 3 * D + 3 * D) + (D * D + D)
    mlp = (D * M + M) + (M * D + D)
    norms = 2 * 2 * D
    return attn + mlp + norms


def encoder_params(cfg: MAEConfig) -> int:
    D = cfg.encoder.width
    embed = cfg.patch_dim * D + D
    pos = cfg.num_tokens * D
    return embed + pos + cfg.encoder.depth * block_params(cfg.encoder) + 2 * D


def decoder_params(cfg: MAEConfig) -> int:
    D, E = cfg.encoder.width, cfg.decoder.width
    embed = D * E + E
    tokens = E + cfg.num_tokens * E  # mask token + position embedding
    head = E * cfg.patch_dim + cfg.patch_dim
    return embed + tokens + cfg.decoder.depth * block_params(cfg.decoder) + 2 * E + head


def block_forward_flops(s: ViTShape, n: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one block on n tokens."""
    D, M = s.width, s.mlp
    linear = 2 * n * (3 * D * D + D * D + 2 * D * M)
    attention = 2 * 2 * n * n * D  # QK^T and AV
    return linear + attention


@dataclass(frozen=True)
class FlopsPerClip:
    encoder_forward: int
    decoder_forward: int
    embed_forward: int

    @property
    def train(self) -> int:
        # Backward costs twice the forward for every matmul; the tubelet embedding
        # sees raw pixels, which need no gradient, so its backward is one matmul.
        return 3 * (self.encoder_forward + self.decoder_forward) + 2 * self.embed_forward

    @property
    def encoder_inference(self) -> int:
        return self.embed_forward + self.encoder_forward


def flops_per_clip(cfg: MAEConfig, visible: int | None = None) -> FlopsPerClip:
    """Training FLOPs for one clip: encoder on the K visible tokens, decoder on all N."""
    N = cfg.num_tokens
    K = cfg.num_visible if visible is None else visible
    D, E = cfg.encoder.width, cfg.decoder.width
    embed = 2 * N * cfg.patch_dim * D  # the Conv3d runs over the whole clip
    enc = cfg.encoder.depth * block_forward_flops(cfg.encoder, K)
    dec = (
        2 * K * D * E
        + cfg.decoder.depth * block_forward_flops(cfg.decoder, N)
        + 2 * (N - K) * E * cfg.patch_dim
    )
    return FlopsPerClip(encoder_forward=enc, decoder_forward=dec, embed_forward=embed)


def encoder_inference_flops(cfg: MAEConfig) -> int:
    """Forward FLOPs of the encoder on all tokens of a clip (what frozen evals pay)."""
    N = cfg.num_tokens
    return 2 * N * cfg.patch_dim * cfg.encoder.width + cfg.encoder.depth * block_forward_flops(cfg.encoder, N)


@dataclass(frozen=True)
class MemoryEstimate:
    model_states: int  # sharded params, grads, fp32 master and Adam moments
    gathered_params: int  # the blocks ZeRO-3 holds whole at once (current + prefetched)
    activations: int

    @property
    def total(self) -> int:
        return self.model_states + self.gathered_params + self.activations


def zero3_memory_per_gpu(
    cfg: MAEConfig, gpus: int, micro_batch: int, bf16: bool = True, activation_checkpointing: bool = False
) -> MemoryEstimate:
    """Bytes per GPU under ZeRO-3 with AdamW.

    Model states follow the ZeRO paper: 2+2 bytes (bf16 params, grads) + 12 bytes
    (fp32 master, Adam m and v) per parameter, all partitioned over `gpus`. The
    activation estimate follows Korthikanti et al. (2022) with flash attention
    (no N x N score matrix kept): ~34 bytes x tokens x width per block in 16-bit,
    or only each block's input when activations are checkpointed.
    """
    P = encoder_params(cfg) + decoder_params(cfg)
    # fp32 training (params, grads, m, v at 4 bytes) also comes to 16 bytes a parameter.
    model_states = 16 * P // max(gpus, 1)
    width_bytes = 2 if bf16 else 4
    gathered = 2 * width_bytes * max(block_params(cfg.encoder), block_params(cfg.decoder))

    def stack(s: ViTShape, n: int) -> int:
        per_block = 34 * n * s.width * width_bytes // 2
        if activation_checkpointing:
            return s.depth * n * s.width * width_bytes + per_block
        return s.depth * per_block

    acts = micro_batch * (stack(cfg.encoder, cfg.num_visible) + stack(cfg.decoder, cfg.num_tokens))
    return MemoryEstimate(model_states=model_states, gathered_params=gathered, activations=acts)
