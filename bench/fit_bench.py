"""Fitting benchmark on the DAVIS clips (first 30 frames at 427x240; bench/scenes.py says where they are read).

    python bench/fit_bench.py [--preset fast] [--budget 300] [--clips blackswan car-shadow]
                              [--device auto] [--seed 0] [--set train.cuda_graph=true ...]

Each run is a fresh subprocess (so peak memory is its own). Prints one table row per clip
and mask mode: DIS preprocessing time, fit time until the running PSNR (moving average
of the batch PSNR) first reaches 25/30/33 dB, final full-frame PSNR, foreground IoU of
the fitted opacity against the ground-truth masks, iterations/s and peak RSS; below a
row, the fit's warnings (a degenerate or drifting layer, a poor reconstruction). A fit is
deterministic for its seed; another `--seed` shows how far a row moves by chance.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from scenes import DAVIS, available

ROOT = Path(__file__).resolve().parent.parent


def worker(clip: str, masks: bool, preset: str, budget: float, frames: str, size: str, device: str, overrides: list[str],
           seed: int = 0) -> dict:
    import torch

    import atlas
    from atlas.io import read_video, unit_float

    folder = DAVIS / clip
    video = read_video(folder / "frames", frames=frames, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = atlas.fit(video, Path(tmp) / "b", preset, overrides, masks=str(folder / "masks") if masks else None,
                           time_budget=budget or None, iters=1_000_000 if budget else None, device=device, seed=seed, quiet=True)
        gt = unit_float(read_video(folder / "masks", frames=frames, size=size).frames)[..., 0] > 0.5
        alpha = torch.stack([1.0 - bundle.frame_maps(t).weights[..., 0] for t in range(bundle.num_frames)]) > 0.5
        m, tm = bundle.meta.metrics, bundle.meta.timings
    return {
        "clip": clip, "masks": "given" if masks else "none", "preprocess_s": tm["preprocess_s"],
        "reach": m["running_psnr_reached_s"], "psnr": m["psnr_mean"], "iou": float((alpha & gt).sum() / (alpha | gt).sum()),
        "iters": m["iterations"], "it_s": m["iters_per_s"], "fit_s": tm["fit_s"], "backend": bundle.meta.encoding_backend,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "warnings": m.get("warnings", []),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument("--budget", type=float, default=300.0, help="fitting seconds per run (0: the preset's iterations)")
    p.add_argument("--clips", nargs="+", default=["blackswan", "car-shadow"])
    p.add_argument("--modes", nargs="+", default=["none", "given"], help="mask modes: none (motion bootstrap) and/or given")
    p.add_argument("--frames", default="0:30", help="frame range, e.g. 0:30; 0: for each whole clip")
    p.add_argument("--size", default="427x240")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="the fits' seed")
    p.add_argument("--worker", nargs=2, metavar=("CLIP", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1] == "given", a.preset, a.budget, a.frames, a.size, a.device, a.overrides, a.seed)))
        return 0
    if not DAVIS.is_dir():
        print(f"skipped: {DAVIS} not found (set ATLAS_BENCH_DATA to a folder holding davis/<clip>/frames and masks)")
        return 0
    clips = available(a.clips)
    print(f"preset {a.preset} {' '.join(a.overrides)}, budget {a.budget:g} s, frames {a.frames} at {a.size}, device {a.device}, seed {a.seed}; "
          "t@X = fit seconds until the running PSNR reached X dB")
    head = f"{'clip':<18} {'masks':<6} {'DIS s':>6} {'t@25':>6} {'t@30':>6} {'t@33':>6} {'PSNR':>6} {'IoU':>5} {'iters':>6} {'it/s':>6} {'peak MB':>8} backend"
    print(head)
    print("-" * len(head))
    for clip in clips:
        for mode in a.modes:
            cmd = [sys.executable, __file__, "--worker", clip, mode, "--preset", a.preset, "--budget", str(a.budget), "--frames", a.frames,
                   "--size", a.size, "--device", a.device, "--seed", str(a.seed), *[f"--set={o}" for o in a.overrides]]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{clip:<18} {mode:<6} FAILED: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            t = lambda k: f"{r['reach'][k]:.0f}" if k in r["reach"] else "-"
            print(f"{clip:<18} {r['masks']:<6} {r['preprocess_s']:>6.1f} {t('25'):>6} {t('30'):>6} {t('33'):>6} {r['psnr']:>6.2f} "
                  f"{r['iou']:>5.2f} {r['iters']:>6} {r['it_s']:>6.1f} {r['peak_mb']:>8.0f} {r['backend']}", flush=True)
            for line in r["warnings"]:
                print(f"    warning: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
