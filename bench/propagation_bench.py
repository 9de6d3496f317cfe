"""Propagation benchmark: render/edit throughput and keyframe-edit accuracy.

    python bench/propagation_bench.py [--fit-iters 1200] [--preset default]

1. Throughput (frames/s) on synthetic clips at 427x240 and 854x480: evaluating the
   frame maps (the model: uv + weights per pixel, done once per frame), then an overlay
   edit and a replace render from cached maps (what repeated edits cost).
2. Keyframe propagation on a synthetic clip with ground truth: a patch painted on the
   true background is given as an edited frame 0; PSNR inside the edit region over the
   other frames, for the atlas and for a chained optical-flow baseline (DIS flow, the
   edit warped frame to frame).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas  # noqa: E402
from atlas.evaluate import psnr  # noqa: E402
from atlas.io import Video  # noqa: E402
from atlas.preprocess import dis_flow, warp_sample  # noqa: E402
from atlas.synthetic import make_clip  # noqa: E402
from editing import edit  # noqa: E402
from propagation.render import iter_overlay, iter_replace  # noqa: E402


def _fit(clip, iters: int, tmp: str, name: str, preset: str = "fast"):
    video = Video(clip.frames, clip.fps, "synthetic", (0, clip.frames.shape[0]))
    return atlas.fit(video, Path(tmp) / name, preset, iters=iters, quiet=True)


def throughput(tmp: str) -> None:
    print(f"{'size':<9} {'frames':>6} {'maps fps':>9} {'overlay fps':>12} {'replace fps':>12}")
    for (w, h, t) in [(427, 240, 16), (854, 480, 8)]:
        clip = make_clip(num_frames=t, width=w, height=h)
        bundle = _fit(clip, 20, tmp, f"speed{w}")
        bundle.forget_maps()  # measure the model evaluation too
        t0 = time.perf_counter()
        for i in range(t):
            bundle.frame_maps(i)
        maps_fps = t / (time.perf_counter() - t0)
        paint = bundle.textures["background"].copy()
        paint[: paint.shape[0] // 3, : paint.shape[1] // 3, 3] = 1.0
        paint[: paint.shape[0] // 3, : paint.shape[1] // 3, :3] = 1.0
        t0 = time.perf_counter()
        list(iter_overlay(bundle, {"background": paint}, clip.frames))
        overlay_fps = t / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        list(iter_replace(bundle, {"background": paint}))
        replace_fps = t / (time.perf_counter() - t0)
        print(f"{w}x{h:<5} {t:>6} {maps_fps:>9.1f} {overlay_fps:>12.1f} {replace_fps:>12.1f}", flush=True)


def chained_flow(frames: torch.Tensor, keyframe: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: warp the edited keyframe and its mask frame to frame with DIS flow."""
    _, bwd = dis_flow(frames.numpy())
    out = [keyframe]
    cur, m = keyframe.numpy(), mask.numpy().astype(np.float32)
    for t in range(1, frames.shape[0]):
        cur = warp_sample(cur, bwd[t - 1])
        m = warp_sample(m, bwd[t - 1])
        out.append(torch.from_numpy(np.where(m[..., None] > 0.5, cur, frames[t].numpy())))
    return torch.stack(out)


def keyframe_accuracy(tmp: str, iters: int, preset: str) -> None:
    clip = make_clip(num_frames=16, width=160, height=120, seed=3)
    bg = clip.background.copy()
    ys, xs = np.mgrid[0 : bg.shape[0], 0 : bg.shape[1]]
    patch = (xs - 45) ** 2 + (ys - 50) ** 2 <= 18**2
    bg[patch] = 0.4 * bg[patch] + 0.6 * np.array([1.0, 0.9, 0.1], np.float32)
    text = np.zeros(bg.shape[:2], np.uint8)
    cv2.putText(text, "EDIT", (20, 90), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)  # thin strokes: a hard case
    bg[text > 0] = (0.1, 0.1, 0.9)
    truth = clip.render(background=bg)
    region = (truth - clip.frames).abs().amax(-1) > 1e-4
    bundle = _fit(clip, iters, tmp, "accuracy", preset)
    ours = edit(bundle, keyframes={0: truth[0]}, frames=clip.frames).frames
    base = chained_flow(clip.frames, truth[0], region[0])
    score = lambda out: [psnr(out[t][region[t]], truth[t][region[t]]) for t in range(1, len(truth)) if region[t].any()]
    a, b = score(ours), score(base)
    print(f"\nkeyframe edit on a synthetic 160x120x16 clip (fit: preset {preset}, {iters} iterations, recon {bundle.meta.metrics['psnr_mean']:.1f} dB)")
    print(f"{'method':<22} {'mean PSNR':>10} {'min':>6} {'last frame':>11}   (dB inside the edit region, frames 1..15)")
    print(f"{'atlas (ours)':<22} {np.mean(a):>10.2f} {min(a):>6.2f} {a[-1]:>11.2f}")
    print(f"{'chained DIS flow':<22} {np.mean(b):>10.2f} {min(b):>6.2f} {b[-1]:>11.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-iters", type=int, default=1200)
    p.add_argument("--preset", default="default", help="preset of the accuracy fit (throughput fits use fast)")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        throughput(tmp)
        keyframe_accuracy(tmp, a.fit_iters, a.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
