"""Hash-grid encoding backends behind one call, :func:`hash_encode`.

Backends: ``torch`` (pure PyTorch, :mod:`cuda_ext.reference`, always available and the
oracle in tests). Native ``cpu``/``cuda`` kernels and ``tcnn`` are not built yet: asking
for them falls back to ``torch`` with one warning. Importing this package loads no native
code.
"""
from __future__ import annotations

import warnings

import torch

from .reference import hash_encode_torch

BACKENDS = ("auto", "cuda", "cpu", "torch", "tcnn")
_warned: set[str] = set()


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """Name of the backend that will actually run for `name` on `device`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown encoding backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ("auto", "torch"):
        return "torch"
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"hash-encoding backend {name!r} is not available in this build; using 'torch'", stacklevel=2)
    return "torch"


def hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Multiresolution hash encoding of x [N, D] in [0, 1] -> [N, L*F] (see reference)."""
    if x.dim() != 2 or table.dim() != 3 or resolutions.shape != (table.shape[0], x.shape[1]):
        raise ValueError(
            f"hash_encode: expected x [N, D], table [L, S, F], resolutions [L, D]; got "
            f"{tuple(x.shape)}, {tuple(table.shape)}, {tuple(resolutions.shape)}"
        )
    return hash_encode_torch(x, table, resolutions)
