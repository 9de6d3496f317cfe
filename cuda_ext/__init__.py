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


def _native(kind: str):
    module = _backend.load_backend(kind)
    if module is None:
        raise RuntimeError(f"hash-encoding backend {kind!r} is not available: {_backend.error(kind)}")
    return module


# The native kernels as torch operators (torch.library), not an autograd.Function around
# a pybind call, so torch.compile traces a step straight through them and fuses the rest.
@torch.library.custom_op("atlas_hashgrid::encode", mutates_args=())
def native_hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, offsets: torch.Tensor, kind: str) -> torch.Tensor:
    """Forward of the native module `kind` (a loaded backend's name) on a [R, F] table; see
    :func:`hash_encode`."""
    return _native(kind).forward(x, table, resolutions, offsets)


@native_hash_encode.register_fake
def _(x, table, resolutions, offsets, kind):
    width, n = resolutions.shape[0] * table.shape[1], x.shape[0]
    # the cpu kernel writes [N, L*F]; the CUDA kernels write feature-major and return the transpose
    return x.new_empty(n, width) if kind == "cpu" else x.new_empty(width, n).t()


@torch.library.custom_op("atlas_hashgrid::encode_backward", mutates_args=())
def _native_backward(grad: torch.Tensor, x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, offsets: torch.Tensor,
                     kind: str, need_table: bool, need_x: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(table gradient, input gradient); an empty tensor for one not asked for."""
    g_table, g_x = _native(kind).backward(grad, x, table, resolutions, offsets, need_table, need_x)
    return (g_table if need_table else table.new_empty(0)), (g_x if need_x else x.new_empty(0))


@_native_backward.register_fake
def _(grad, x, table, resolutions, offsets, kind, need_table, need_x):
    return table.new_empty(table.shape if need_table else (0,)), x.new_empty(x.shape if need_x else (0,))


def _setup_context(ctx, inputs, output) -> None:
    x, table, resolutions, offsets, kind = inputs
    ctx.save_for_backward(x, table, resolutions, offsets)
    ctx.kind = kind


def _backward(ctx, grad):
    x, table, resolutions, offsets = ctx.saved_tensors
    need_x, need_table = ctx.needs_input_grad[:2]
    g_table, g_x = _native_backward(grad, x, table, resolutions, offsets, ctx.kind, need_table, need_x)
    return (g_x if need_x else None), (g_table if need_table else None), None, None, None


native_hash_encode.register_autograd(_backward, setup_context=_setup_context)


def uniform_offsets(levels: int, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[L + 1] offsets of a table whose L levels have `rows` rows each."""
    return torch.arange(levels + 1, device=device, dtype=torch.long) * rows


def hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, backend: str = "torch",
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Multiresolution hash encoding.

    Args:
        x: [N, D] coordinates in [0, 1]; values outside are clamped (and get no gradient).
        table: [R, F] features, level l in rows offsets[l] .. offsets[l + 1] - 1; or [L, S, F]
            (every level S rows; then no offsets). float32/float64, or float16 storage on
            native backends; the cuda backend takes F in {1, 2, 4, 8}, the others F <= 8;
            R < 2^31.
        resolutions: [L, D] int64 grid resolution per level and dimension (at most 2^24).
        backend: a resolved backend name (see :func:`resolve_backend`).
        offsets: [L + 1] int64, with a [R, F] table.
    Returns:
        [N, L * F] features in x's dtype, level-major. The cuda backend returns a transposed
        view of a feature-major [L * F, N] buffer (its kernels write and read that layout
        coalesced; a Linear layer takes it without a copy), so `.view()` needs `.contiguous()`.
    """
    if table.dim() == 3 and offsets is None:
        offsets = uniform_offsets(table.shape[0], table.shape[1], x.device)
        table = table.reshape(-1, table.shape[2])
    if (x.dim() != 2 or table.dim() != 2 or offsets is None or resolutions.dim() != 2 or resolutions.shape[1] != x.shape[1]
            or offsets.shape != (resolutions.shape[0] + 1,)):
        raise ValueError(
            f"hash_encode: expected x [N, D], table [R, F] with offsets [L + 1] (or [L, S, F]), resolutions [L, D]; got "
            f"{tuple(x.shape)}, {tuple(table.shape)}, {None if offsets is None else tuple(offsets.shape)}, {tuple(resolutions.shape)}"
        )
    resolutions = resolutions.to(device=x.device, dtype=torch.long)
    offsets = offsets.to(device=x.device, dtype=torch.long)
    if backend in ("cpu", "cuda"):
        return native_hash_encode(x, table, resolutions, offsets, backend)
    if backend != "torch":
        raise ValueError(f"hash_encode: backend must be resolved first (cpu, cuda or torch), got {backend!r}")
    return hash_encode_torch(x, table.to(x.dtype), resolutions, offsets)
