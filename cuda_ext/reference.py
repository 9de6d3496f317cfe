"""Pure-PyTorch multiresolution hash encoding (Instant-NGP): the oracle for every backend.

Layout shared by all backends:
    table        [R, F]     features; level l owns rows offsets[l] .. offsets[l + 1] - 1
    resolutions  [L, D]     grid resolution per level and input dimension (int64)
    offsets      [L + 1]    first table row of each level, then R (int64)
A level whose (res + 1)**D vertices fit in its S_l rows is indexed densely (row-major, x
fastest); otherwise vertices are hashed with XOR of coordinate * prime (Teschner et al.),
mod S_l. Inputs are in [0, 1] and clamped to it (no gradient outside the closed interval);
coordinate 1.0 lands on the last vertex.
Autograd gives gradients for the table and for the input coordinates.
"""
from __future__ import annotations

import torch

PRIMES = (1, 2654435761, 805459861, 3674653429)


def corner_offsets(n_dims: int, device: torch.device) -> torch.Tensor:
    """[2**D, D] binary offsets of a cell's corners (bit d of the corner index = dim d)."""
    idx = torch.arange(2**n_dims, device=device)
    return torch.stack([(idx >> d) & 1 for d in range(n_dims)], dim=-1)


def vertex_index(corners: torch.Tensor, resolutions: torch.Tensor, level_rows: torch.Tensor) -> torch.Tensor:
    """Row within its level of each integer vertex. corners [N, L, C, D] int64, level_rows
    [L] (each level's row count) -> [N, L, C] int64."""
    n_dims = corners.shape[-1]
    verts = resolutions + 1  # [L, D]
    strides = torch.cumprod(torch.cat([torch.ones_like(verts[:, :1]), verts[:, :-1]], dim=1), dim=1)
    dense = (corners * strides[None, :, None, :]).sum(-1)
    hashed = corners[..., 0] * PRIMES[0]
    for d in range(1, n_dims):
        hashed = hashed ^ (corners[..., d] * PRIMES[d])
    hashed = hashed % level_rows[None, :, None]
    is_dense = (verts.prod(dim=1) <= level_rows)[None, :, None]
    return torch.where(is_dense, dense, hashed)


def hash_encode_torch(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Encode points.

    Args:
        x: [N, D] coordinates in [0, 1] (clamped).
        table: [R, F] features of every level.
        resolutions: [L, D] int64 grid resolution per level and dimension.
        offsets: [L + 1] int64 first row of each level, then R.
    Returns:
        [N, L * F] interpolated features, level-major.
    """
    n, n_dims = x.shape
    n_levels, n_feat = resolutions.shape[0], table.shape[1]
    res = resolutions.to(device=x.device, dtype=torch.long)
    offsets = offsets.to(device=x.device, dtype=torch.long)
    # clamp to [0, 1]; the gradient passes on the closed interval (explicit, so the
    # convention does not depend on torch.clamp's boundary rule)
    xc = torch.where((x >= 0) & (x <= 1), x, x.detach().clamp(0.0, 1.0))
    pos = xc[:, None, :] * res.to(x.dtype)[None]  # [N, L, D]
    cell = torch.minimum(pos.detach().floor().long(), res[None] - 1).clamp_min(0)
    frac = pos - cell.to(x.dtype)  # [N, L, D]
    offs = corner_offsets(n_dims, x.device)  # [C, D]
    corners = cell[:, :, None, :] + offs[None, None]  # [N, L, C, D]
    rows = vertex_index(corners, res, offsets[1:] - offsets[:-1]) + offsets[:-1][None, :, None]
    feats = table.index_select(0, rows.reshape(-1))
    feats = feats.reshape(n, n_levels, 2**n_dims, n_feat)
    fr = frac[:, :, None, :]
    w = torch.where(offs[None, None].bool(), fr, 1.0 - fr).prod(dim=-1)  # [N, L, C]
    out = (feats * w[..., None].to(feats.dtype)).sum(dim=2)
    return out.reshape(n, n_levels * n_feat)
