"""Hash-grid encoding backends behind one call, :func:`hash_encode`.

Backends:
  ``torch``  pure PyTorch (:mod:`cuda_ext.reference`), always available, the oracle in tests;
  ``cpu``    C++ with at::parallel_for (``csrc/hashgrid_cpu.cpp``);
  ``cuda``   CUDA kernels (``csrc/hashgrid_cuda.cu``);
  ``tcnn``   tiny-cuda-nn: accepted but never run (see TCNN_REASON); asking for it warns
             once and uses what ``auto`` picks.
``auto`` picks cuda for CUDA tensors, cpu for CPU tensors, and torch when a native
backend cannot be built or loaded (one warning per backend per process). Importing this
package compiles and loads nothing.
"""
from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from . import _backend
from .reference import hash_encode_torch

BACKENDS = ("auto", "cuda", "cpu", "torch", "tcnn")
_warned: set[str] = set()


# Why `tcnn` is never run: tiny-cuda-nn's grid has one resolution for every input
# dimension and samples at x * scale + 0.5, while ours has a resolution per dimension (a
# video's time axis has one cell per frame). Its tables could not hold our model, and a
# bundle fitted with it could not be rendered by the cpu or torch backends.
TCNN_REASON = "tiny-cuda-nn's isotropic grid cannot hold this model's per-dimension resolutions"


def _fallback(name: str, reason: str, to: str = "torch") -> str:
    if name not in _warned:
        _warned.add(name)
        slower = " slower" if to == "torch" else ""
        warnings.warn(f"hash-encoding backend {name!r} unavailable ({reason}); using the{slower} {to!r} backend", stacklevel=3)
    return to


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """Name of the backend that will actually run for `name` on `device`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown encoding backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device).type
    if name == "torch":
        return "torch"
    if name == "tcnn":
        return _fallback("tcnn", TCNN_REASON, to=resolve_backend("auto", device))
    kind = dev if name == "auto" else name
    if kind not in ("cpu", "cuda"):
        return _fallback(kind, f"no native kernel for {dev} tensors")
    if kind != dev:
        return _fallback(kind, f"tensors are on {dev}")
    if _backend.load_backend(kind) is None:
        return _fallback(kind, _backend.error(kind) or "build failed")
    return kind


class _NativeHashEncode(torch.autograd.Function):
    """Autograd wrapper over a native module's forward/backward (first-order only)."""

    @staticmethod
    def forward(ctx, x, table, resolutions, module):  # type: ignore[override]
        ctx.save_for_backward(x, table, resolutions)
        ctx.module = module
        return module.forward(x, table, resolutions)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, table, resolutions = ctx.saved_tensors
        g_table, g_x = ctx.module.backward(grad, x, table, resolutions, ctx.needs_input_grad[1], ctx.needs_input_grad[0])
        return g_x, g_table, None, None


def hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Multiresolution hash encoding.

    Args:
        x: [N, D] coordinates in [0, 1]; values outside are clamped (and get no gradient).
        table: [L, S, F] features (float32/float64, or float16 storage on native backends);
            the cuda backend takes F in {1, 2, 4, 8}, the others F <= 8; S < 2^31.
        resolutions: [L, D] int64 grid resolution per level and dimension (at most 2^24).
        backend: a resolved backend name (see :func:`resolve_backend`).
    Returns:
        [N, L * F] features in x's dtype, level-major. The cuda backend returns a transposed
        view of a feature-major [L * F, N] buffer (its kernels write and read that layout
        coalesced; a Linear layer takes it without a copy), so `.view()` needs `.contiguous()`.
    """
    if x.dim() != 2 or table.dim() != 3 or resolutions.shape != (table.shape[0], x.shape[1]):
        raise ValueError(
            f"hash_encode: expected x [N, D], table [L, S, F], resolutions [L, D]; got "
            f"{tuple(x.shape)}, {tuple(table.shape)}, {tuple(resolutions.shape)}"
        )
    if backend in ("cpu", "cuda"):
        module = _backend.load_backend(backend)
        if module is None:
            raise RuntimeError(f"hash-encoding backend {backend!r} is not available: {_backend.error(backend)}")
        return _NativeHashEncode.apply(x, table, resolutions.to(device=x.device, dtype=torch.long), module)
    if backend != "torch":
        raise ValueError(f"hash_encode: backend must be resolved first (cpu, cuda or torch), got {backend!r}")
    return hash_encode_torch(x, table.to(x.dtype), resolutions)
