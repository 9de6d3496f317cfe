"""Hash-encoding throughput per backend (points/s), and the fitter's iterations/s.

    python bench/encoding_bench.py [--sizes 14 16 18 20] [--repeat 3] [--fit-iters 40] [--devices cpu cuda]

Table: L=16 levels, F=2 features, T=19 (at most 2^19 rows per level; coarse, dense levels fewer), 2-D and 3-D inputs, fp32
and (native backends) fp16 table storage,
forward alone and forward+backward (table gradient alone, and with the input gradient),
for every backend that loads here (torch reference, cpu, cuda). Best of --repeat runs after one warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas.encoding import HashGrid  # noqa: E402
from cuda_ext import _backend  # noqa: E402


def backends(devices: list[str]) -> list[tuple[str, torch.device]]:
    out = []
    if "cpu" in devices:
        out += [("torch", torch.device("cpu")), ("cpu", torch.device("cpu"))]
    if "cuda" in devices and torch.cuda.is_available():
        out += [("torch", torch.device("cuda")), ("cuda", torch.device("cuda"))]
    return [(b, d) for b, d in out if b == "torch" or _backend.load_backend(b) is not None]


def timed(fn, device: torch.device, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def encoding_table(sizes: list[int], repeat: int, max_torch_cpu: int, devices: list[str]) -> None:
    print("f+b: forward and backward, with the table gradient only (as the fitter's 3-D grids) and with the input gradient too")
    print(f"{'backend':<8} {'device':<6} {'table':<5} {'dims':>4} {'points':>8} {'fwd ms':>9} {'fwd pts/s':>11} {'f+b ms':>9} "
          f"{'f+b+x ms':>9} {'f+b+x pts/s':>12}")
    rows = [(name, dev, table) for name, dev in backends(devices) for table in (("fp32", "fp16") if name != "torch" else ("fp32",))]
    for name, dev, table in rows:
        for dims in (2, 3):
            grid = HashGrid(dims, 16, 2, 19, base=16, finest=2048 if dims == 2 else 512, backend=name).to(dev)
            if table == "fp16":  # fp16 table storage, fp32 math
                grid.table.data = grid.table.data.half()
            for log_n in sizes:
                n = 2**log_n
                if name == "torch" and dev.type == "cpu" and log_n > max_torch_cpu:
                    continue
                x = torch.rand(n, dims, device=dev)
                xg = x.clone().requires_grad_(True)
                g = torch.randn(n, grid.out_dim, device=dev)  # dense, as a Linear layer's input gradient

                def fwd():
                    with torch.no_grad():
                        grid(x)

                def fwd_bwd(inp: torch.Tensor):
                    grid.table.grad = None
                    inp.grad = None
                    grid(inp).backward(g)

                tf = timed(fwd, dev, repeat)
                tb, tx = timed(lambda: fwd_bwd(x), dev, repeat), timed(lambda: fwd_bwd(xg), dev, repeat)
                print(f"{name:<8} {dev.type:<6} {table:<5} {dims:>4} {'2^' + str(log_n):>8} {tf * 1e3:>9.2f} {n / tf:>11.3g} "
                      f"{tb * 1e3:>9.2f} {tx * 1e3:>9.2f} {n / tx:>12.3g}", flush=True)


def fit_table(iters: int, devices: list[str]) -> None:
    import tempfile

    import atlas
    from atlas.io import Video
    from atlas.synthetic import make_clip

    clip = make_clip(num_frames=16, width=160, height=120)
    video = Video(clip.frames, clip.fps, "synthetic", (0, 16))
    print(f"\nfitter on a synthetic 160x120x16 clip, preset fast, {iters} iterations (x: against torch on that device)")
    print(f"{'backend':<8} {'device':<6} {'graph':<5} {'it/s':>7} {'x':>6}")
    runs = [(name, dev, False) for name, dev in backends(devices)]
    runs += [(name, dev, True) for name, dev, _ in runs if dev.type == "cuda" and name != "torch"]
    reference: dict[str, float] = {}
    for name, dev, graph in runs:
        with tempfile.TemporaryDirectory() as tmp:
            b = atlas.fit(video, Path(tmp) / "b", "fast", [f"model.encoding_backend={name}", f"train.cuda_graph={str(graph).lower()}"],
                          iters=iters, device=dev.type, quiet=True)
        its = b.meta.metrics["iters_per_s"]
        if name == "torch":
            reference[dev.type] = its
        ratio = f"{its / reference[dev.type]:.1f}" if dev.type in reference else "-"
        print(f"{name:<8} {dev.type:<6} {'yes' if graph else 'no':<5} {its:>7.2f} {ratio:>6}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 16, 18, 20], help="log2 of the point counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-torch-cpu", type=int, default=18, help="skip larger sizes for the slow torch-on-CPU reference")
    p.add_argument("--fit-iters", type=int, default=40)
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu", "cuda"], help="which devices to measure")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    encoding_table(a.sizes, a.repeat, a.max_torch_cpu, a.devices)
    if a.fit_iters:
        fit_table(a.fit_iters, a.devices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
