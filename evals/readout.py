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
    def __init__(
        self,
        feat_dim: int,
        grid: tuple[int, int, int],
        out_dim: int,
        num_queries: int = 1,
        cond_dim: int = 0,
        width: int = 128,
        heads: int = 4,
        samples: int = 0,
        joint: bool = False,
        sample_width: int = 0,
    ):
        super().__init__()
        assert width % heads == 0, f"readout width {width} must be a multiple of heads {heads}"
        self.grid, self.heads = grid, heads
        self.norm = nn.LayerNorm(feat_dim)
        self.time_embed = nn.Parameter(torch.zeros(1, grid[0], 1, feat_dim))  # one vector per token time step
        # Learned queries when nothing conditions them, else a projection of the conditioning input.
        self.query = nn.Parameter(torch.randn(1, num_queries, width) * 0.02) if cond_dim == 0 else None
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        # TAP-style: features at `samples` points per query (its own (t, y, x), or that place at every
        # time step), sampled trilinearly from the token grid, projected into the query.
        # With sample_width, each point's feature is first projected to that width (shared over points),
        # so a head reading many points does not grow with the encoder's width: on 512 training clips
        # the concatenated 20 x 128 features of a wide encoder overfit where an 8-wide one's did not.
        if samples and sample_width:
            self.sample = nn.Sequential(
                nn.Unflatten(-1, (samples, feat_dim)),
                nn.Linear(feat_dim, sample_width),
                nn.Flatten(-2),
                nn.Linear(samples * sample_width, width),
            )
        else:
            self.sample = nn.Linear(samples * feat_dim, width) if samples else None
        # Joint output: one prediction per clip from all queries' outputs side by side (e.g. one query per
        # token time step, so a clip label or camera motion can compare time steps).
        self.joint = joint
        self.q, self.k, self.v = (
            nn.Linear(width, width),
            nn.Linear(feat_dim, width),
            nn.Linear(feat_dim, width),
        )
        self.proj = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width * (num_queries if joint else 1), out_dim)
        # Zero output: an untrained head predicts the task's prior (the baseline for residual tasks).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, feats: torch.Tensor, cond: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        """feats (B, N, D) in (t, h, w) raster order; cond (B, Q, C) or None; where (B, Q, K, 3) as (x, y, t)
        in [-1, 1] (grid_sample's convention: -1 / 1 are the outer edges of the first / last token), needed
        when built with samples=K -> (B, Q, O), or (B, 1, O) when joint."""
        B, N, D = feats.shape
        t = self.grid[0]
        x = self.norm(feats)
        q = self.query.expand(B, -1, -1) if self.cond is None else self.cond(cond)  # (B, Q, W)
        if self.sample is not None:
            q = q + self.sampled(x, where)  # (B, Q, W)
        x = (x.view(B, t, N // t, D) + self.time_embed).view(B, N, D)
        Q, W = q.shape[1], q.shape[2]

        def heads(z):  # (B, L, W) -> (B, h, L, W/h)
            return z.view(B, z.shape[1], self.heads, W // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.q(q)), heads(self.k(x)), heads(self.v(x))
        )  # (B, h, Q, W/h)
        q = q + self.proj(y.transpose(1, 2).reshape(B, Q, W))
        q = self.out_norm(q + self.mlp(self.mlp_norm(q)))
        return self.out(q.reshape(B, 1, -1)) if self.joint else self.out(q)

    def sampled(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """`self.sample` of the features x (B, N, D) at `where` (B, Q, K, 3) -> (B, Q, W). Sampling is
        linear, so when the first projection is narrower than D it goes first and the sampling moves
        fewer channels: the same sum (up to rounding), and for a wide encoder or pixels several times
        less of grid_sample, the dearest op of a point-tracking readout on a CPU."""
        D, K = x.shape[-1], where.shape[2]
        shared = isinstance(self.sample, nn.Sequential)  # each point to sample_width first, then all points
        first = self.sample[1] if shared else self.sample
        if first.out_features >= D:  # nothing narrower to sample: sample, then project
            return self.sample(self._at(x, where).flatten(2))
        if shared:
            return self.sample[2:](self._at(first(x), where))
        blocks = first.weight.view(first.out_features, K, D)  # the columns that read point k's features
        return first.bias + sum(
            self._at(x @ blocks[:, k].T, where[:, :, k : k + 1])[:, :, 0] for k in range(K)
        )

    def _at(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Trilinear samples of x (B, N, C) on the token grid at `where` (B, Q, K, 3) -> (B, Q, K, C)."""
        B, _, C = x.shape
        grid = x.view(B, *self.grid, C).permute(0, 4, 1, 2, 3)  # (B, C, t, h, w)
        s = F.grid_sample(grid, where[:, :, :, None], align_corners=False, padding_mode="border")
        return s[..., 0].permute(0, 2, 3, 1)  # (B, C, Q, K, 1) -> (B, Q, K, C)


def fourier_features(x: torch.Tensor, bands: int = 8) -> torch.Tensor:
    """Coordinates in [0, 1] (..., K) -> (..., K * (2 * bands + 1)): raw value plus sin/cos at
    octave frequencies, so a linear layer can resolve positions finer than a token."""
    freqs = (2.0 ** torch.arange(bands, dtype=x.dtype, device=x.device)) * math.pi  # (bands,)
    ang = x[..., None] * freqs  # (..., K, bands)
    return torch.cat([x[..., None], ang.sin(), ang.cos()], -1).flatten(-2)


def token_centres(grid: tuple[int, int, int]) -> torch.Tensor:
    """(N, 1, 3) centres of a (t, h, w) token grid in raster order, as `where` (x, y, t) in [-1, 1]: queries
    placed there sample exactly their own token's feature."""
    axes = [(torch.arange(n) + 0.5) / n * 2 - 1 for n in grid]
    t, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, t], -1).reshape(-1, 1, 3)


def at_every_time(xy: torch.Tensor, t: int) -> torch.Tensor:
    """Places (..., 2) as (x, y) in [-1, 1] -> `where` (..., t, 3): that place at each of t token time
    steps."""
    times = (torch.arange(t, dtype=xy.dtype) + 0.5) / t * 2 - 1
    return torch.cat(
        [xy[..., None, :].expand(*xy.shape[:-1], t, 2), times.expand(*xy.shape[:-1], t)[..., None]], -1
    )
