"""Real-plate sizes: peak memory and time of `atlas fit` and `atlas export` on 1080p and 4K shots.

    python bench/plate_bench.py [--sizes 1920x1080 3840x2160] [--frames 60 120] [--iters 200]
                                [--preset fast] [--device cpu|cuda] [--export] [--spill]

For each size, a synthetic plate (atlas.synthetic.write_plate: a panning textured
background and a moving textured disc) is written to a temporary folder as JPEGs, one
frame at a time; each frame count is then fitted from those files in a fresh subprocess
for `--iters` steps (with `--spill`, the shot's arrays in memory-mapped files:
train.spill=always). Per run: peak RSS (after the fit, and after the export with
`--export`), its bytes per shot pixel above the interpreter's own, the peak of the
process's anonymous memory (RssAnon, sampled every 50 ms: what cannot be dropped under
pressure, unlike a spill's file pages), the estimate atlas.memory checks against, the time per frame of decoding, preprocessing (DIS flow,
consistency, bootstrap masks, long-range correspondences), evaluation and export, the fit's
steps per second and the reconstruction PSNR (of a short fit: no quality target).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def anon_peak_sampler() -> dict:
    """Start a thread that keeps the peak RssAnon (bytes) in the returned dict's "peak"."""
    box = {"peak": 0}

    def run() -> None:
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        box["peak"] = max(box["peak"], int(line.split()[1]) * 1024)
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return box


def worker(pattern: str, frames: int, preset: str, iters: int, device: str, export: bool, spill: bool) -> dict:
    import torch

    import atlas
    from atlas import memory
    from atlas.config import load_config
    from propagation.export import export as export_bundle

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    anon = anon_peak_sampler()
    overrides = [f"train.spill={'always' if spill else 'never'}"]
    with tempfile.TemporaryDirectory(dir=Path(pattern).parent.parent) as tmp:  # beside the plate, not inside it
        bundle = atlas.fit(pattern, Path(tmp) / "b", preset, overrides, frames=f"0:{frames}", iters=iters, device=device, quiet=True)
        fit_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        export_s = None
        if export:
            t0 = time.perf_counter()
            export_bundle(bundle, Path(tmp) / "export")
            export_s = time.perf_counter() - t0
    w, h = bundle.size
    m, tm = bundle.meta.metrics, bundle.meta.timings
    host, gpu = memory.estimate(frames, h, w, load_config(preset).model, spill=spill)
    return {"size": f"{w}x{h}", "frames": frames, "pixels": frames * w * h, "base": base, "fit_peak": fit_peak, "anon_peak": anon["peak"],
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "estimate": host, "timings": tm,
            "it_s": m["iters_per_s"], "psnr": m["psnr_mean"], "export_s": export_s, "atlas": [layer.atlas_size for layer in bundle.meta.layers],
            "gpu_peak": torch.cuda.max_memory_reserved() if device == "cuda" else None, "gpu_estimate": gpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1920x1080"])
    p.add_argument("--frames", nargs="+", type=int, default=[60])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--preset", default="fast")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--export", action="store_true", help="also export each bundle (atlases, uv EXRs, STMaps) and time it")
    p.add_argument("--spill", action="store_true", help="fit with the shot's arrays in memory-mapped files (train.spill=always)")
    p.add_argument("--tmp", help="folder for the plates and bundles (default: the system's temporary folder)")
    p.add_argument("--worker", nargs=2, metavar=("PATTERN", "FRAMES"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.preset, a.iters, a.device, a.export, a.spill)))
        return 0
    from atlas.synthetic import write_plate

    print(f"preset {a.preset}, {a.iters} steps, device {a.device}, spill {'on' if a.spill else 'off'}; times in seconds per frame")
    head = (f"{'size':>10}{'frames':>7}{'Mpx':>7}{'peak GB':>8}{'B/px':>6}{'anon GB':>8}{'est GB':>7}{'read':>7}{'prep':>7}{'it/s':>7}"
            f"{'eval':>7}{'bake s':>7}{'export':>7}{'PSNR':>7}  atlases")
    print(head + "\n" + "-" * len(head))
    for size in a.sizes:
        w, h = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
            pattern = write_plate(Path(tmp) / "plate", max(a.frames), w, h)
            for frames in a.frames:
                cmd = [sys.executable, __file__, "--preset", a.preset, "--iters", str(a.iters), "--device", a.device, "--worker", str(pattern), str(frames)]
                res = subprocess.run(cmd + (["--export"] if a.export else []) + (["--spill"] if a.spill else []), capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{size:>10}{frames:>7} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                tm, n = r["timings"], frames
                export = f"{r['export_s'] / n:>7.2f}" if r["export_s"] is not None else f"{'-':>7}"
                print(f"{size:>10}{n:>7}{r['pixels'] / 1e6:>7.0f}{r['peak'] / 1e9:>8.2f}{(r['fit_peak'] - r['base']) / r['pixels']:>6.1f}"
                      f"{r['anon_peak'] / 1e9:>8.2f}{r['estimate'] / 1e9:>7.2f}{tm['read_s'] / n:>7.2f}{tm['preprocess_s'] / n:>7.2f}{r['it_s']:>7.2f}"
                      f"{tm['evaluate_s'] / n:>7.2f}{tm['bake_s']:>7.1f}{export}{r['psnr']:>7.2f}  "
                      + " ".join(f"{x}x{y}" for x, y in r["atlas"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
