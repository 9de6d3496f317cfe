"""The CUDA sources must compile for sm_90 wherever nvcc exists, GPU or not."""
from __future__ import annotations

import pytest

from cuda_ext.build import compile_check_cuda, cuda_home, source_hash


@pytest.mark.skipif(cuda_home() is None, reason="no CUDA toolkit (nvcc) on this machine")
def test_cuda_kernels_and_binding_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    commands = compile_check_cuda(tmp_path)
    assert (tmp_path / "hashgrid_cuda.o").stat().st_size > 0
    assert "sm_90" in commands[0]


def test_source_hash_tracks_headers(tmp_path, monkeypatch):
    import shutil

    import cuda_ext.build as build

    copy = tmp_path / "csrc"
    shutil.copytree(build.CSRC, copy)
    monkeypatch.setattr(build, "CSRC", copy)
    before = source_hash()
    (copy / "hashgrid_common.h").write_text((copy / "hashgrid_common.h").read_text() + "\n// changed\n")
    assert source_hash() != before
