"""Native hash-encoding backends against the pure-PyTorch reference (fresh random inputs).

Tolerances: float64 agrees to rounding (1e-10); float32 features are sums of at most
2^D * L products of O(1) numbers, so 1e-5 relative is a few ulps of accumulated error;
fp16 table storage is compared against the reference run on the same fp16-rounded table.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest
import torch

import cuda_ext
from atlas.encoding import level_resolutions
from cuda_ext import _backend
from cuda_ext.build import CSRC, cuda_home, source_hash

ON_HOST = "cuda-code-on-cpu"

BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
    # the CUDA kernels' per-thread code compiled for and run on the CPU: the CUDA path's
    # layout and indexing, checked where no GPU is
    pytest.param(ON_HOST, id=ON_HOST, marks=pytest.mark.skipif(cuda_home() is None, reason="no CUDA toolkit (cuda_fp16.h)")),
]


@functools.cache
def _cuda_kernels_on_host():
    from torch.utils.cpp_extension import load

    src = Path(__file__).resolve().parent / "csrc" / "cuda_kernels_on_host.cpp"
    digest = hashlib.sha256((source_hash() + src.read_text()).encode()).hexdigest()[:10]
    return load(name=f"atlas_cuda_kernels_on_host_{digest}", sources=[str(src)], extra_cflags=["-O2"],
                extra_include_paths=[str(CSRC), str(cuda_home() / "include")])


@pytest.fixture(params=BACKENDS)
def backend(request):
    name = request.param
    if name == ON_HOST:
        _cuda_kernels_on_host()  # a build error fails the test
    elif _backend.load_backend(name) is None:
        pytest.fail(f"{name} backend did not build: {_backend.error(name)}")
    return name


def encode(x: torch.Tensor, table: torch.Tensor, res: torch.Tensor, backend: str, offsets: torch.Tensor | None = None) -> torch.Tensor:
    if backend == ON_HOST:
        _backend._cache[ON_HOST] = _cuda_kernels_on_host()  # where the operator finds a backend's module
        if offsets is None:
            table, offsets = table.reshape(-1, table.shape[-1]), cuda_ext.uniform_offsets(table.shape[0], table.shape[1], x.device)
        return cuda_ext.native_hash_encode(x, table, res, offsets, ON_HOST)
    return cuda_ext.hash_encode(x, table, res, backend, offsets=offsets)


def _device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


def _case(dims, dtype, device, levels=6, log2=12, finest=None, n=3000):
    finest = finest or ([300, 200, 40, 10][:dims])
    res = level_resolutions(levels, [3.0] * dims, finest).to(device)
    table = (torch.rand(levels, 2**log2, 2, dtype=dtype, device=device) * 2 - 1).requires_grad_(True)
    x = torch.rand(n, dims, dtype=dtype, device=device).requires_grad_(True)
    return x, table, res


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("feat", [1, 2, 4, 8])
def test_forward_and_gradients_match_reference(backend, dims, feat):
    dev = _device(backend)
    x, table, res = _case(dims, torch.float64, dev)
    table = (torch.rand(table.shape[0], table.shape[1], feat, dtype=torch.float64, device=dev) * 2 - 1).requires_grad_(True)
    assert not ((res + 1).prod(1) <= table.shape[1]).all(), "want hashed levels too"
    out = encode(x, table, res, backend)
    ref = encode(x, table, res, "torch")
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(out)
    gx, gt = torch.autograd.grad(out, (x, table), g)
    rx, rt = torch.autograd.grad(ref, (x, table), g)
    assert torch.allclose(gt, rt, atol=1e-10)
    assert torch.allclose(gx, rx, atol=1e-8, rtol=1e-10)


def test_levels_of_different_sizes_match_reference(backend):
    """HashGrid's layout: one [R, F] table in which each level has only the rows it uses."""
    dev = _device(backend)
    res = level_resolutions(6, [3.0, 3.0, 2.0], [300, 200, 40]).to(dev)
    rows = (res + 1).prod(1).clamp_max(2**12)
    assert rows.unique().numel() > 3
    offsets = torch.cat([rows.new_zeros(1), rows.cumsum(0)])
    table = (torch.rand(int(offsets[-1]), 2, dtype=torch.float64, device=dev) * 2 - 1).requires_grad_(True)
    x = torch.rand(2000, 3, dtype=torch.float64, device=dev).requires_grad_(True)
    out, ref = encode(x, table, res, backend, offsets), encode(x, table, res, "torch", offsets)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(out)
    got, want = torch.autograd.grad(out, (x, table), g), torch.autograd.grad(ref, (x, table), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)


def test_float32_matches(backend):
    x, table, res = _case(3, torch.float32, _device(backend), levels=16, log2=14)
    out = encode(x, table, res, backend)
    ref = encode(x, table, res, "torch")
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    gt = torch.autograd.grad(out.square().sum(), table)[0]
    rt = torch.autograd.grad(ref.square().sum(), table)[0]
    assert torch.allclose(gt, rt, atol=1e-4, rtol=1e-4)


def test_fp16_table_storage(backend):
    x, table, res = _case(2, torch.float32, _device(backend))
    half = table.detach().half().requires_grad_(True)
    out = encode(x.detach(), half, res, backend)
    ref = encode(x.detach(), half.detach().float(), res, "torch")
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    assert half.grad.dtype == torch.float16


def test_edges_borders_and_clamping(backend):
    dev = _device(backend)
    res = level_resolutions(4, [4.0, 4.0], [64, 48]).to(dev)
    table = torch.rand(4, 2**10, 2, dtype=torch.float64, device=dev, requires_grad=True)
    k = torch.randint(0, 5, (50, 2), device=dev).double()
    on_borders = k / 4.0  # multiples of the coarsest cell: every level's borders
    special = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-0.3, 0.5], [1.7, -2.0]], dtype=torch.float64, device=dev)
    x = torch.cat([on_borders, special]).requires_grad_(True)
    out = encode(x, table, res, backend)
    ref = encode(x, table, res, "torch")
    assert torch.allclose(out, ref, atol=1e-10)
    gx = torch.autograd.grad(out.sum(), x)[0]
    rx = torch.autograd.grad(ref.sum(), x)[0]
    assert torch.allclose(gx, rx, atol=1e-8)
    assert (gx[-2:] == 0).sum() >= 2  # clamped coordinates get no gradient
    empty = encode(torch.zeros(0, 2, dtype=torch.float64, device=dev), table, res, backend)
    assert empty.shape == (0, 8)


def test_gradcheck(backend):
    dev = _device(backend)
    res = level_resolutions(2, [3.0, 3.0, 2.0], [7, 5, 3]).to(dev)
    table = torch.randn(2, 2**6, 2, dtype=torch.float64, device=dev, requires_grad=True)
    x = (torch.rand(5, 3, dtype=torch.float64, device=dev) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: encode(a, b, res, backend), (x, table), eps=1e-6, atol=1e-6)


def test_operator_registration(backend):
    """What torch.compile relies on: the fake (meta) outputs have the real ones' shapes and
    strides, the schema holds, and autograd goes through the registered formula."""
    dev = _device(backend)
    x, table, res = _case(3, torch.float32, dev, levels=3, log2=8, n=64)
    encode(x, table, res, backend)  # loads the module under the name the operator looks up
    flat, offsets = table.detach().reshape(-1, table.shape[-1]), cuda_ext.uniform_offsets(table.shape[0], table.shape[1], dev)
    for needs in ((True, True), (False, True), (True, False)):
        args = (x.detach().requires_grad_(needs[0]), flat.clone().requires_grad_(needs[1]), res, offsets, backend)
        torch.library.opcheck(cuda_ext.native_hash_encode, args)


def test_compiled_function_matches_eager(tmp_path):
    """torch.compile traces through the operator without a graph break and gives the same
    values and gradients (inductor's C++ code on the CPU)."""
    import torch._dynamo

    x, table, res = _case(3, torch.float32, torch.device("cpu"), levels=4, log2=10, n=500)
    net = torch.nn.Linear(8, 3)

    def f(x, table):
        return torch.sigmoid(net(cuda_ext.hash_encode(x * 0.5 + 0.25, table, res, "cpu"))).square().mean()

    explained = torch._dynamo.explain(f)(x, table)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    eager = f(x, table)
    eager_grads = torch.autograd.grad(eager, (x, table))
    compiled = torch.compile(f, fullgraph=True)(x, table)
    grads = torch.autograd.grad(compiled, (x, table))
    assert torch.allclose(compiled, eager, rtol=1e-5)
    for g, e in zip(grads, eager_grads):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-7)


def test_auto_picks_the_native_backend(backend):
    if backend == ON_HOST:
        pytest.skip("not a backend that auto can pick")
    assert cuda_ext.resolve_backend("auto", _device(backend)) == backend


def test_tcnn_request_uses_what_auto_picks(backend, monkeypatch):
    if backend == ON_HOST:
        pytest.skip("not a backend that auto can pick")
    monkeypatch.setattr(cuda_ext, "_warned", set())
    with pytest.warns(UserWarning, match="isotropic grid"):
        assert cuda_ext.resolve_backend("tcnn", _device(backend)) == backend


def test_table_gradient_is_deterministic():
    x, table, res = _case(3, torch.float32, torch.device("cpu"), levels=8, n=20000)
    grads = [torch.autograd.grad(encode(x, table, res, "cpu").sum(), table)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_table_as_an_unaligned_view(backend):
    """Native kernels load table rows as aligned vectors; a view starting mid-row still works."""
    dev = _device(backend)
    x, table, res = _case(3, torch.float32, dev)
    flat = torch.rand(table.numel() + 1, device=dev)
    view = flat[1:].view(table.shape)  # data pointer 4 bytes past an aligned one
    assert view.data_ptr() % 8 != 0
    out, ref = (encode(x.detach(), view, res, b) for b in (backend, "torch"))
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_table_size_need_not_be_a_power_of_two(backend):
    dev = _device(backend)
    res = level_resolutions(3, [3.0, 3.0, 3.0], [60, 60, 60]).to(dev)
    table = (torch.rand(3, 1000, 2, dtype=torch.float64, device=dev) * 2 - 1).requires_grad_(True)
    x = torch.rand(500, 3, dtype=torch.float64, device=dev, requires_grad=True)
    out, ref = (encode(x, table, res, b) for b in (backend, "torch"))
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, table), g), torch.autograd.grad(ref, (x, table), g)):
        assert torch.allclose(a, b, atol=1e-8)
