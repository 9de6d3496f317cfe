"""Peak host memory of `atlas fit` against the estimate `atlas.memory` checks before a fit.

    python bench/memory_bench.py [--clip car-shadow] [--sizes 854x480 427x240] [--foregrounds 0 1 2]
                                 [--preset fast] [--iters 20] [--map-cache-mb MB] [--device cpu|cuda]

Each fit runs in a fresh subprocess on the first 40 frames of a DAVIS clip (a synthetic
clip where the benches' data folder, bench/scenes.py, lacks it) and reports its own peak
RSS. The table gives, per layer count, the measured peak, the estimate, and the
per-pixel slope between the two sizes: the per-pixel numbers in atlas/memory.py come from
here. `--map-cache-mb 0` stops the fit from keeping any frame's maps for the bundle's
cache (capped at 1 GB), which is how a shot too long for that cache behaves. With
`--device cuda` the fit runs on the GPU and two more columns compare its peak GPU memory
(reserved by torch) with the estimate.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from scenes import DAVIS


def worker(clip: str, size: str, fg: int, preset: str, iters: int, map_cache_mb: float | None, device: str) -> dict:
    import torch

    import atlas
    import atlas.bundle
    from atlas import memory
    from atlas.config import load_config
    from atlas.io import Video, read_video
    from atlas.synthetic import make_clip

    w, h = (int(v) for v in size.split("x"))
    if (DAVIS / clip).is_dir():
        video = read_video(DAVIS / clip / "frames", frames="0:40", size=size)
    else:
        c = make_clip(num_frames=40, width=w, height=h)
        video = Video(c.frames, c.fps, "synthetic", (0, 40))
    if map_cache_mb is not None:
        atlas.bundle.MAP_CACHE_BYTES = int(map_cache_mb * 2**20)
    overrides = [f"model.num_foregrounds={fg}"]
    cfg = load_config(preset, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        atlas.fit(video, Path(tmp) / "b", preset, overrides, iters=iters, device=device, quiet=True)
    t = video.frames.shape[0]
    host, gpu = memory.estimate(t, h, w, cfg.model, atlas.bundle.MAP_CACHE_BYTES)
    return {"layers": fg + 1, "size": size, "pixels": t * h * w, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "estimate": host, "gpu_peak": torch.cuda.max_memory_reserved() if device == "cuda" else None, "gpu_estimate": gpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="car-shadow")
    p.add_argument("--sizes", nargs="+", default=["854x480", "427x240"])
    p.add_argument("--foregrounds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--preset", default="fast")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--map-cache-mb", type=float, help="cap of the frame maps the fit keeps (default: the bundle's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.clip, a.worker[0], int(a.worker[1]), a.preset, int(a.worker[2]), a.map_cache_mb, a.device)))
        return 0
    print(f"clip {a.clip} (40 frames), device {a.device}, preset {a.preset}, {a.iters} iterations, map cache "
          f"{'the default' if a.map_cache_mb is None else f'{a.map_cache_mb:g} MB'}")
    gpu_head = f" {'GPU peak GB':>12} {'GPU est GB':>11}" if a.device == "cuda" else ""
    print(f"{'layers':>6} {'size':>9} {'Mpixels':>8} {'peak GB':>8} {'estimate GB':>12} {'est/peak':>9} {'slope B/px':>11}{gpu_head}")
    for fg in a.foregrounds:
        rows = []
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--clip", a.clip, "--preset", a.preset, "--device", a.device, "--worker", size, str(fg),
                   str(a.iters)]
            cmd += ["--map-cache-mb", str(a.map_cache_mb)] if a.map_cache_mb is not None else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
        for i, r in enumerate(rows):
            slope = ""
            if i > 0 and rows[0]["pixels"] != r["pixels"]:
                slope = f"{(rows[0]['peak'] - r['peak']) / (rows[0]['pixels'] - r['pixels']):.1f}"
            gpu = f" {r['gpu_peak'] / 1e9:>12.2f} {r['gpu_estimate'] / 1e9:>11.2f}" if r["gpu_peak"] is not None else ""
            print(f"{r['layers']:>6} {r['size']:>9} {r['pixels'] / 1e6:>8.1f} {r['peak'] / 1e9:>8.2f} {r['estimate'] / 1e9:>12.2f} "
                  f"{r['estimate'] / r['peak']:>9.2f} {slope:>11}{gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
