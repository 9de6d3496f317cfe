"""The pure-PyTorch hash encoding against an independent per-point loop, and its gradients."""
from __future__ import annotations

import itertools

import pytest
import torch

import cuda_ext
from atlas.encoding import HashGrid, level_resolutions
from cuda_ext.reference import PRIMES


def naive_encode(x: torch.Tensor, table: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """Textbook Instant-NGP, one point and one level at a time (slow, obviously right).
    `table` is [L, S, F], or a list of per-level [S_l, F] tables."""
    n, d = x.shape
    levels, feat = len(table), table[0].shape[-1]
    out = torch.zeros(n, levels * feat, dtype=table[0].dtype)
    for i in range(n):
        for lvl in range(levels):
            size = table[lvl].shape[0]
            r = [int(v) for v in res[lvl]]
            dense = 1
            for v in r:
                dense *= v + 1
            p = [min(max(float(x[i, k]), 0.0), 1.0) * r[k] for k in range(d)]
            base = [min(int(p[k] // 1), r[k] - 1) for k in range(d)]
            acc = torch.zeros(feat, dtype=table[0].dtype)
            for corner in itertools.product((0, 1), repeat=d):
                c = [base[k] + corner[k] for k in range(d)]
                if dense <= size:
                    idx, stride = 0, 1
                    for k in range(d):
                        idx += c[k] * stride
                        stride *= r[k] + 1
                else:
                    h = 0
                    for k in range(d):
                        h ^= c[k] * PRIMES[k]
                    idx = h % size
                w = 1.0
                for k in range(d):
                    f = p[k] - base[k]
                    w *= f if corner[k] else 1.0 - f
                acc += w * table[lvl][idx]
            out[i, lvl * feat : (lvl + 1) * feat] = acc
    return out


@pytest.mark.parametrize("dims,finest,log2", [(2, (40, 30), 10), (3, (20, 16, 6), 9), (3, (9, 7, 5), 14)])
def test_matches_naive(dims, finest, log2):
    res = level_resolutions(5, [2.0] * dims, finest)
    table = torch.randn(5, 2**log2, 2, dtype=torch.float64)
    x = torch.rand(40, dims, dtype=torch.float64)
    got = cuda_ext.hash_encode(x, table, res)
    want = naive_encode(x, table, res)
    assert torch.allclose(got, want, atol=1e-12)
    # the configurations cover both dense and hashed levels
    dense = (res + 1).prod(1) <= 2**log2
    assert dense.any()


def test_levels_of_different_sizes():
    """The layout HashGrid uses: one [R, F] table, each level only the rows it needs."""
    res = level_resolutions(5, [2.0, 2.0, 2.0], [60, 40, 9])
    rows = (res + 1).prod(1).clamp_max(2**10)
    assert rows.unique().numel() > 2, "dense levels of several sizes and hashed ones"
    tables = [torch.randn(int(n), 4, dtype=torch.float64) for n in rows]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), rows.cumsum(0)])
    x = torch.rand(50, 3, dtype=torch.float64)
    got = cuda_ext.hash_encode(x, torch.cat(tables), res, offsets=offsets)
    assert torch.allclose(got, naive_encode(x, tables, res), atol=1e-12)


def test_hash_grid_sizes_levels_and_loads_old_tables():
    grid = HashGrid(2, n_levels=6, log2_table_size=10, base=4, finest=200, backend="torch")
    rows = (grid.offsets[1:] - grid.offsets[:-1]).tolist()
    assert rows == [min(2**10, (int(r[0]) + 1) * (int(r[1]) + 1)) for r in grid.resolutions]
    assert grid.table.shape == (sum(rows), 2) and rows[0] < rows[-1] == 2**10
    # a format-1 bundle's [L, S, F] table (S = the largest level's rows) loads level by level
    old = torch.randn(6, max(rows), 2)
    state = {k: v for k, v in grid.state_dict().items() if k != "offsets"} | {"table": old}
    fresh = HashGrid(2, n_levels=6, log2_table_size=10, base=4, finest=200, backend="torch")
    fresh.load_state_dict(state)
    x = torch.rand(64, 2)
    assert torch.allclose(fresh(x), cuda_ext.hash_encode(x, old, grid.resolutions))


def test_hashed_levels_present():
    res = level_resolutions(4, [4.0, 4.0, 4.0], [200, 200, 200])
    assert not ((res + 1).prod(1) <= 2**12).all()
    table = torch.randn(4, 2**12, 2, dtype=torch.float64)
    x = torch.rand(30, 3, dtype=torch.float64)
    assert torch.allclose(cuda_ext.hash_encode(x, table, res), naive_encode(x, table, res), atol=1e-12)


def test_edges_and_clamping():
    res = level_resolutions(3, [4.0, 4.0], [16, 16])
    table = torch.randn(3, 2**10, 4, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.25], [0.25, 1.0]], dtype=torch.float64)
    assert torch.allclose(cuda_ext.hash_encode(x, table, res), naive_encode(x, table, res), atol=1e-12)
    outside = torch.tensor([[-0.5, 1.5], [2.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(cuda_ext.hash_encode(outside, table, res), cuda_ext.hash_encode(outside.clamp(0, 1), table, res))
    empty = cuda_ext.hash_encode(torch.zeros(0, 2, dtype=torch.float64), table, res)
    assert empty.shape == (0, 12)


def test_gradcheck_table_and_inputs():
    res = level_resolutions(2, [3.0, 3.0, 2.0], [7, 5, 3])
    table = torch.randn(2, 2**6, 2, dtype=torch.float64, requires_grad=True)
    # keep points away from cell borders, where the encoding is only C0
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cuda_ext.hash_encode(a, b, res), (x, table), eps=1e-6, atol=1e-6)


def test_module_shapes_and_backend_fallback(monkeypatch):
    grid = HashGrid(3, n_levels=4, n_features=2, log2_table_size=12, finest=(32, 32, 8), backend="torch")
    y = grid(torch.rand(7, 3))
    assert y.shape == (7, 8)
    assert cuda_ext.resolve_backend("torch") == "torch"
    # a native backend that cannot load falls back to torch with one warning naming the reason
    from cuda_ext import _backend

    monkeypatch.setitem(_backend._cache, "cpu", None)
    monkeypatch.setitem(_backend._errors, "cpu", "compiler exploded")
    monkeypatch.setattr(cuda_ext, "_warned", set())
    with pytest.warns(UserWarning, match="compiler exploded"):
        assert cuda_ext.resolve_backend("auto", "cpu") == "torch"
    with pytest.warns(UserWarning, match="tiny-cuda-nn's isotropic grid.*'torch'"):
        assert cuda_ext.resolve_backend("tcnn") == "torch"  # what auto picks here, with the cpu kernel unloadable
    with pytest.raises(ValueError, match="unknown encoding backend"):
        cuda_ext.resolve_backend("magic")
    with pytest.raises(ValueError, match="expected x"):
        cuda_ext.hash_encode(torch.rand(3, 2), grid.table, grid.resolutions)
    with pytest.raises(ValueError, match="n_features must be one of"):
        HashGrid(2, n_features=3)
    with pytest.raises(ValueError, match="above 2\\^24"):
        HashGrid(2, finest=(2**25, 64))


def test_levels_finer_than_a_samples_footprint_fade_out():
    grid = HashGrid(2, n_levels=6, n_features=2, log2_table_size=12, base=4, finest=128)
    cells = grid.resolutions[:, 0].float()  # 4 .. 128 cells per unit
    w = grid.level_weights(torch.tensor([1.0 / 128, 1.0 / 32, 2.0 / 32, 1.0]))
    assert torch.equal(w[0], torch.ones(6))  # a footprint of one finest cell keeps every level
    assert torch.equal(w[1] == 1, cells <= 32) and torch.equal(w[1] == 0, cells >= 64)
    assert torch.all(w[2] <= w[1]) and w[2].sum() < w[1].sum()  # twice the footprint, fewer levels
    assert w[3].sum() == 0  # an area larger than the coarsest cell: nothing but the MLP's bias
    x = torch.rand(64, 2)
    far = torch.full((64,), 1.0 / 16)
    before = grid(x, far)
    with torch.no_grad():  # change the levels finer than half the footprint
        fine = grid.offsets[(cells >= 32).nonzero()[0, 0]]
        grid.table[fine:] += 1.0
    assert torch.equal(grid(x, far), before)
    assert not torch.equal(grid(x), grid(x, far))
