"""Loading native kernels lazily: prebuilt module -> JIT build -> None (caller falls back).

Nothing is compiled at import. A failed build is remembered for the process and reported
once. JIT builds are cached by torch.utils.cpp_extension (TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions) under a name that includes a hash of csrc/, so any source or
header change is a visible rebuild. Set ATLAS_EXT_VERBOSE=1 to
see compiler output, ATLAS_NO_EXT=1 to never build.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"
_cache: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}

SOURCES = {
    "cpu": ["hashgrid_cpu.cpp"],
    "cuda": ["hashgrid_cuda.cpp", "hashgrid_cuda.cu"],
}


def _jit(kind: str) -> ModuleType:
    from .build import cuda_home, source_hash, wheel_cuda_includes

    # torch.utils.cpp_extension fixes its CUDA_HOME when first imported, guessing from the
    # `nvcc` on PATH, which is wrong when that is a wrapper script: give it the real root
    home = cuda_home() if kind == "cuda" else None
    if home is not None:
        os.environ.setdefault("CUDA_HOME", str(home))
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # it logs that guess
    import torch.utils.cpp_extension as cpp_extension
    from torch.utils.cpp_extension import get_default_build_root, load

    if home is not None:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # in case it was imported before
    name = f"atlas_hashgrid_{kind}_{source_hash()}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    if not any(root.glob(f"**/{name}/{name}*.so")):
        print(f"cuda_ext: compiling the {kind} hash-encoding kernel (once; about a minute)", file=sys.stderr)
    verbose = bool(os.environ.get("ATLAS_EXT_VERBOSE"))
    kwargs = {"extra_cflags": ["-O3", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}
    if kind == "cuda":
        kwargs["extra_cuda_cflags"] = ["-O3"]
        kwargs["extra_include_paths"] = wheel_cuda_includes()
    return load(name=name, sources=[str(CSRC / s) for s in SOURCES[kind]], verbose=verbose, **kwargs)


def load_backend(kind: str) -> ModuleType | None:
    """The native module for `kind` ('cpu' or 'cuda'), or None with the reason in `error(kind)`."""
    if kind in _cache:
        return _cache[kind]
    module = None
    if os.environ.get("ATLAS_NO_EXT"):
        _errors[kind] = "disabled by ATLAS_NO_EXT"
    else:
        try:
            module = importlib.import_module(f"cuda_ext._C_{kind}")  # built by `pip install` (AOT)
        except ImportError:
            try:
                if kind == "cuda":
                    import torch

                    if not torch.cuda.is_available():
                        raise RuntimeError("no CUDA device")
                module = _jit(kind)
            except Exception as exc:  # compiler/linker failures have many types; all mean "unavailable"
                _errors[kind] = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    _cache[kind] = module
    return module


def error(kind: str) -> str | None:
    return _errors.get(kind)
