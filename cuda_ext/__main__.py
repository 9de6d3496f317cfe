"""`python -m cuda_ext --check`: which hash-encoding backends build and load here."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from . import _backend
from .build import arch_flags, compile_check_cuda, cuda_home


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m cuda_ext", description=__doc__)
    parser.add_argument("--check", action="store_true", help="build/load every backend and report")
    args = parser.parse_args()
    if not args.check:
        parser.print_help()
        return 0
    ok = True
    print("torch      available (reference)")
    cpu = _backend.load_backend("cpu")
    print(f"cpu        {'loaded' if cpu else 'UNAVAILABLE: ' + str(_backend.error('cpu'))}")
    ok &= cpu is not None
    if torch.cuda.is_available():
        cuda = _backend.load_backend("cuda")
        print(f"cuda       {'loaded on ' + torch.cuda.get_device_name() if cuda else 'UNAVAILABLE: ' + str(_backend.error('cuda'))}")
        ok &= cuda is not None
    elif cuda_home() is None:
        print("cuda       not built: no nvcc (set CUDA_HOME) and no GPU")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                compile_check_cuda(Path(tmp))
                print(f"cuda       compiles ({' '.join(arch_flags())}); not loaded: no GPU visible")
            except Exception as exc:  # report any compiler failure, keep going
                print(f"cuda       COMPILE FAILED: {exc}")
                ok = False
    try:
        import tinycudann  # noqa: F401

        print("tcnn       importable, but not used: its isotropic grid cannot hold our per-dimension grids (auto is used)")
    except ImportError:
        print("tcnn       not installed (optional)")
    return 0 if ok else 1


sys.exit(main())
