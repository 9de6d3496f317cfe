"""Motion bootstrap (the foreground guess made without masks) against ground-truth masks.

    python bench/bootstrap_bench.py [--size 427x240] [--frames 32] [--clips ...] [--colour-refine none|grow|trim]
                                    [--frame-step N]

For the DAVIS clips and the real-texture synthetic clips (both bench/scenes.py) and the
procedural synthetic clip, computes DIS flow and `atlas.preprocess.motion_masks`, and
prints precision, recall and IoU over the clip, and the recall of the object's thin
parts (ground-truth foreground within 3 px of the mask's edge), where a fit that starts
from a mask without them leaves them to the background. `--frame-step N` keeps every Nth
of those frames: the same shots with N times their motion. No fitting: a few seconds a clip.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from scenes import CLIPS, DAVIS, SCENES, SYNTHETIC, available, scene_clip


def clip_frames(clip: str, frames: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, H, W, 3] uint8 or float32, ground-truth masks [T, H, W] bool)."""
    from atlas.io import read_video
    from atlas.preprocess import read_masks
    from atlas.synthetic import make_clip

    if clip in SCENES:
        c = scene_clip(clip, frames, w, h)
        return c.frames.numpy(), c.masks.numpy() >= 0.5
    if clip == SYNTHETIC:
        c = make_clip(num_frames=frames, width=w, height=h, seed=0)
        return c.frames.numpy(), c.masks.numpy() >= 0.5
    video = read_video(DAVIS / clip / "frames", frames=(0, frames), size=(w, h))
    t = len(video.frames)  # a clip shorter than --frames is read whole
    return video.frames.numpy(), read_masks(DAVIS / clip / "masks", t, (0, t), (w, h)) > 0.5


def thin_parts(masks: np.ndarray, px: float = 3.0) -> np.ndarray:
    """Foreground pixels within `px` of the mask's edge (a thin part is all edge)."""
    return np.stack([(cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 5) <= px) & m for m in masks])


def scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    tp = float((pred & gt).sum())
    edge = thin_parts(gt)
    return {"precision": tp / max(pred.sum(), 1), "recall": tp / max(gt.sum(), 1), "iou": tp / max((pred | gt).sum(), 1),
            "edge_recall": float((pred & edge).sum()) / max(edge.sum(), 1)}


def main() -> int:
    from atlas.config import COLOUR_REFINES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="427x240")
    p.add_argument("--frames", type=int, default=32, help="first frames of each clip (a large number: whole clips)")
    p.add_argument("--clips", nargs="+", default=CLIPS + list(SCENES) + [SYNTHETIC])
    p.add_argument("--colour-refine", default="none", choices=COLOUR_REFINES, help="re-cut the masks by colour (preprocess.colour_refine)")
    p.add_argument("--frame-step", type=int, default=1, help="every Nth of those frames: N times the motion (fast cameras)")
    a = p.parse_args()
    if a.frame_step < 1:
        p.error("--frame-step must be at least 1")
    from atlas.io import parse_size
    from atlas.preprocess import consistency, dis_flow, motion_masks

    w, h = parse_size(a.size)
    clips = available(a.clips)
    every = f", one frame in {a.frame_step}" if a.frame_step > 1 else ""
    print(f"motion bootstrap, {a.size}, first {a.frames} frames{every}, colour refinement {a.colour_refine}")
    head = f"{'clip':<20}{'precision':>10}{'recall':>8}{'IoU':>7}{'thin recall':>12}{'s':>6}"
    print(head + "\n" + "-" * len(head))
    rows = []
    for clip in clips:
        frames, gt = clip_frames(clip, a.frames, w, h)
        frames, gt = frames[:: a.frame_step], gt[:: a.frame_step]
        fwd, bwd = dis_flow(frames)
        vf = np.stack([consistency(fwd[i], bwd[i]) for i in range(len(fwd))])
        vb = np.stack([consistency(bwd[i], fwd[i]) for i in range(len(fwd))])
        t0 = time.perf_counter()
        s = scores(motion_masks(frames, fwd, bwd, vf, vb, colour_refine=a.colour_refine) > 0.5, gt)
        s["s"] = time.perf_counter() - t0
        rows.append((clip, s))
        print(f"{clip:<20}{s['precision']:>10.2f}{s['recall']:>8.2f}{s['iou']:>7.2f}{s['edge_recall']:>12.2f}{s['s']:>6.1f}", flush=True)
    for label, sel in (("mean (real clips)", [s for c, s in rows if c in CLIPS]), ("mean (all)", [s for _, s in rows])):
        if sel:
            m = {k: float(np.mean([s[k] for s in sel])) for k in sel[0]}
            print(f"{label:<20}{m['precision']:>10.2f}{m['recall']:>8.2f}{m['iou']:>7.2f}{m['edge_recall']:>12.2f}{m['s']:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
