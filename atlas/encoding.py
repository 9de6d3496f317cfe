"""Multiresolution hash-grid encoding as an ``nn.Module`` (Instant-NGP, anisotropic levels).

Resolutions grow geometrically from ``base`` to ``finest`` per input dimension, so a
video's time axis can have one cell per frame while x/y go to pixel scale.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import cuda_ext


FEATURES_PER_LEVEL = (1, 2, 4, 8)
MAX_RESOLUTION = 2**24


def level_resolutions(n_levels: int, base: Sequence[float], finest: Sequence[float]) -> torch.Tensor:
    """[L, D] int64: per-dimension geometric progression from base to finest (inclusive)."""
    rows = []
    for lvl in range(n_levels):
        frac = lvl / max(n_levels - 1, 1)
        rows.append([max(1, int(math.floor(b * (f / b) ** frac))) for b, f in zip(base, finest)])
    return torch.tensor(rows, dtype=torch.long)


class HashGrid(nn.Module):
    """x [N, D] in [0, 1] -> features [N, L*F].

    Example:
        >>> enc = HashGrid(3, n_levels=8, finest=(64, 64, 10))
        >>> enc(torch.rand(5, 3)).shape
        torch.Size([5, 16])
    """

    def __init__(
        self,
        n_dims: int,
        n_levels: int = 16,
        n_features: int = 2,
        log2_table_size: int = 19,
        base: float | Sequence[float] = 16,
        finest: float | Sequence[float] = 512,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        base = [float(base)] * n_dims if isinstance(base, (int, float)) else [float(b) for b in base]
        finest = [float(finest)] * n_dims if isinstance(finest, (int, float)) else [float(f) for f in finest]
        base = [min(b, f) for b, f in zip(base, finest)]
        if n_features not in FEATURES_PER_LEVEL:
            raise ValueError(f"HashGrid: n_features must be one of {FEATURES_PER_LEVEL} (a table row loads as one vector), got {n_features}")
        if max(finest) > MAX_RESOLUTION:
            raise ValueError(f"HashGrid: finest resolution {max(finest):g} is above 2^24, which float32 coordinates cannot address")
        self.n_dims, self.n_levels, self.n_features = n_dims, n_levels, n_features
        self.backend = backend
        self.register_buffer("resolutions", level_resolutions(n_levels, base, finest), persistent=True)
        size = 2**log2_table_size
        # a table never needs more rows than the finest dense grid has vertices
        size = min(size, int((self.resolutions + 1).prod(dim=1).max()))
        self.table = nn.Parameter(torch.empty(n_levels, size, n_features).uniform_(-1e-4, 1e-4))

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = cuda_ext.resolve_backend(self.backend, x.device)
        return cuda_ext.hash_encode(x, self.table, self.resolutions, backend=backend)
