"""Build helpers: locate the CUDA toolkit, name builds by source hash, compile-check CUDA.

Environment:
  CUDA_HOME               toolkit root (found from `nvcc` when unset, even through wrapper scripts)
  TORCH_CUDA_ARCH_LIST    e.g. "9.0" or "8.0;9.0" (default 9.0 when no GPU can be queried)
  ATLAS_NO_EXT=1          never build native kernels (pure-PyTorch backend only)
  ATLAS_EXT_VERBOSE=1     show compiler output
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"


def source_hash() -> str:
    """Hash of every file in csrc/ (headers included), so any change means a rebuild."""
    h = hashlib.sha256()
    for f in sorted(CSRC.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def cuda_home() -> Path | None:
    """The CUDA toolkit root: $CUDA_HOME, else where `nvcc` really lives."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return Path(env)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    probe = CSRC / "hashgrid_cuda.cu"
    out = subprocess.run([nvcc, "--dryrun", "-c", str(probe)], capture_output=True, text=True).stderr
    m = re.search(r"^#\$ _HERE_=(.+)$", out, re.MULTILINE)
    return Path(m.group(1)).resolve().parent if m else Path(nvcc).resolve().parent.parent


def wheel_cuda_includes() -> list[str]:
    """Header folders of the CUDA libraries that torch's wheels install (cusparse.h, ...),
    which a bare toolkit may lack."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted({str(p.parent) for root in roots for p in Path(root).glob("*/include/cusparse.h")})


def arch_flags() -> list[str]:
    """nvcc -gencode flags for TORCH_CUDA_ARCH_LIST (default 9.0)."""
    flags = []
    for arch in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").strip()):
        num = arch.replace("+PTX", "").replace(".", "")
        if num:
            flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def compile_check_cuda(out_dir: Path) -> list[str]:
    """Compile the CUDA kernels (nvcc) and syntax-check their torch binding (host compiler),
    without a GPU. Returns the commands run; raises CalledProcessError on a compile error."""
    home = cuda_home()
    if home is None:
        raise FileNotFoundError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    from torch.utils.cpp_extension import include_paths

    nvcc = str(home / "bin" / "nvcc")
    kernels = [nvcc, "-c", "-std=c++17", "-O3", *arch_flags(), str(CSRC / "hashgrid_cuda.cu"), "-o", str(out_dir / "hashgrid_cuda.o")]
    include_dirs = [*include_paths(device_type="cuda"), str(home / "include"), *wheel_cuda_includes(), sysconfig.get_paths()["include"]]
    includes = [f"-I{p}" for p in include_dirs]
    binding = ["c++", "-fsyntax-only", "-std=c++20", "-DTORCH_EXTENSION_NAME=atlas_check", *includes, str(CSRC / "hashgrid_cuda.cpp")]
    for cmd in (kernels, binding):
        subprocess.run(cmd, check=True, capture_output=not os.environ.get("ATLAS_EXT_VERBOSE"), text=True)
    return [" ".join(kernels), " ".join(binding)]
