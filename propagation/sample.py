"""Bilinear sampling of atlas textures at (u, v).

Convention (shared with splat and the STMap export): texel (i, j) of a w x h texture is
centred at uv = ((i + 0.5) / w, (j + 0.5) / h); uv = (0, 0) is the top-left corner of the
texture, v grows downwards.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_tensor(texture: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[h, w, C] float texture as a tensor."""
    return texture if isinstance(texture, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(texture))


def sample(texture: np.ndarray | torch.Tensor, uv: torch.Tensor, outside: str = "zeros") -> torch.Tensor:
    """Sample texture [h, w, C] at uv [..., 2] -> [..., C].

    `outside` is what lies beyond the texture: "zeros" (transparent, for RGBA edits) or
    "border" (the nearest edge texel, for colours).
    """
    tex = as_tensor(texture).to(uv.dtype)
    grid = (uv.reshape(1, -1, 1, 2) * 2.0 - 1.0)
    out = F.grid_sample(tex.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode=outside, align_corners=False)
    return out[0, :, :, 0].T.reshape(*uv.shape[:-1], tex.shape[-1])
