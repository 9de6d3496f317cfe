"""Multiresolution hash-grid encoding as an ``nn.Module`` (Instant-NGP, anisotropic levels).

Resolutions grow geometrically from ``base`` to ``finest`` per input dimension, so a
video's time axis can have one cell per frame while x/y go to pixel scale.
"""
from __future__ import annotations

import itertools
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


def grid_resolutions(n_dims: int, n_levels: int, base: float | Sequence[float], finest: float | Sequence[float]) -> torch.Tensor:
    """[L, D] resolutions of a grid from `base` to `finest` (a number applies to every dimension)."""
    base = [float(base)] * n_dims if isinstance(base, (int, float)) else [float(b) for b in base]
    finest = [float(finest)] * n_dims if isinstance(finest, (int, float)) else [float(f) for f in finest]
    if max(finest) > MAX_RESOLUTION:
        raise ValueError(f"HashGrid: finest resolution {max(finest):g} is above 2^24, which float32 coordinates cannot address")
    return level_resolutions(n_levels, [min(b, f) for b, f in zip(base, finest)], finest)


def level_rows(resolutions: torch.Tensor, log2_table_size: int) -> list[int]:
    """Table rows of each level: its dense vertex count, at most 2^T (then hashed)."""
    return [min(2**log2_table_size, math.prod(r + 1 for r in level)) for level in resolutions.tolist()]


class HashGrid(nn.Module):
    """x [N, D] in [0, 1] -> features [N, L*F]. The table is [R, F]: level l in rows
    offsets[l] .. offsets[l + 1] - 1 (see :mod:`cuda_ext.reference`).

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
        if n_features not in FEATURES_PER_LEVEL:
            raise ValueError(f"HashGrid: n_features must be one of {FEATURES_PER_LEVEL} (a table row loads as one vector), got {n_features}")
        self.n_dims, self.n_levels, self.n_features = n_dims, n_levels, n_features
        self.backend = backend
        self.register_buffer("resolutions", grid_resolutions(n_dims, n_levels, base, finest), persistent=True)
        # each level gets the rows it can use: its dense vertex count, at most 2^T (hashed);
        # coarse levels need a few hundred rows, so one [L, 2^T, F] block would be mostly idle
        # memory that Adam and the gradients still stream every step
        rows = level_rows(self.resolutions, log2_table_size)
        self.register_buffer("offsets", torch.tensor([0, *itertools.accumulate(rows)]), persistent=True)
        self.table = nn.Parameter(torch.empty(int(self.offsets[-1]), n_features).uniform_(-1e-4, 1e-4))

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, x: torch.Tensor, footprint: torch.Tensor | None = None) -> torch.Tensor:
        """`footprint` [N]: the side of the area each sample stands for, in input units (a
        pixel seen through a mapping). Levels whose cells are smaller fade out (:meth:`level_weights`)."""
        backend = cuda_ext.resolve_backend(self.backend, x.device)
        features = cuda_ext.hash_encode(x, self.table, self.resolutions, backend=backend, offsets=self.offsets)
        if footprint is None:
            return features
        weights = self.level_weights(footprint)
        return (features.view(-1, self.n_levels, self.n_features) * weights[..., None]).view(features.shape)

    def level_weights(self, footprint: torch.Tensor) -> torch.Tensor:
        """[N, L] weight of each level for samples of a given footprint [N] (input units):
        1 where a level's cell is at least the footprint, 0 where it is half of it or less,
        log-linear between. A point sample of cells finer than the area it stands for aliases
        (mip-mapping's reason): a pixel of a far frame that sees an object small would pull
        the detail its close frames need toward its own average."""
        cells = self.resolutions.to(footprint.dtype).log().mean(-1).exp()  # [L] cells per input unit, geometric mean over dims
        return (1.0 - torch.log2(footprint[:, None] * cells)).clamp(0.0, 1.0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Bundles before format 2 stored the table as [L, S, F], every level S rows: keep
        each level's first rows (all that its dense or hashed indexing ever reads)."""
        key = prefix + "table"
        old = state_dict.get(key)
        if old is not None and old.dim() == 3:
            rows = (self.offsets[1:] - self.offsets[:-1]).tolist()
            state_dict[key] = torch.cat([old[lvl, :n] for lvl, n in enumerate(rows)])
            state_dict.setdefault(prefix + "offsets", self.offsets)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
