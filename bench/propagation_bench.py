"""Propagation benchmark: render/edit throughput and keyframe-edit accuracy.

    python bench/propagation_bench.py [--fit-iters 1200] [--preset default]
                                      [--only throughput|keyframe|real|splat] [--budget 120] [--frames 30 60]
                                      [--set key=value ...]

1. Throughput (frames/s) on synthetic clips at 427x240 and 854x480: evaluating the
   frame maps (the model: uv + weights per pixel, done once per frame), then an overlay
   edit (with the guided matte, and with the fitted one) and a replace render from cached
   maps (what repeated edits cost).
2. Keyframe propagation on a synthetic clip with ground truth: a patch painted on the
   true background is given as an edited frame 0; PSNR inside the edit region over the
   other frames, for the atlas and for a chained optical-flow baseline (DIS flow, the
   edit warped frame to frame).
3. Keyframe propagation on synthetic clips made of real textures (atlas.synthetic.
   make_warped_clip): a DAVIS frame as the background seen through a turning, zooming
   camera, a DAVIS object cut out with its ground-truth mask as a sprite moving by a
   similarity with a mild bend; 30 and 60 frames at 427x240, fitted without masks for
   `--budget` seconds. Discs painted on the background texture and stripes painted on the
   sprite give the true edited frames; frame 0 of them is the keyframe. PSNR inside each
   layer's edit region, mean over frames 1.. and the worst frame, and outside the edit
   regions (paint left where it does not belong), beside chained DIS flow and the ceiling of any
   keyframe propagation (exact: the keyframe carried along the clip's true motion,
   WarpedClip.carried_keyframe); one row per matte (propagation.matte: the
   layers cut by the guided or the fitted weights).
   Needs the DAVIS clips (bench/scenes.py; skipped without them).
4. Splatting alone, no fit: the real-texture clips' striped sprite in keyframe 0 splatted
   along its true mapping (the sprite texture's coordinates) into atlases 1 to 3 times as
   dense as frame 0 sees it (an atlas is as dense as its layer's closest view), and
   rendered back into frames 1..: edit-region PSNR (mean, worst frame) of each pixel
   spread over its footprint (propagation.splat.footprint) and of bilinear weights alone.
   Needs the DAVIS clips.
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
from environment import describe  # noqa: E402
from propagation.matte import MATTES  # noqa: E402
from propagation.render import iter_overlay, iter_replace  # noqa: E402
from propagation.sample import sample  # noqa: E402
from propagation.splat import SplatAccumulator, footprint  # noqa: E402
from scenes import DAVIS, SCENES, scene_clip  # noqa: E402


def _fit(clip, iters: int, tmp: str, name: str, preset: str = "fast"):
    video = Video(clip.frames, clip.fps, "synthetic", (0, clip.frames.shape[0]))
    return atlas.fit(video, Path(tmp) / name, preset, iters=iters, quiet=True)


def throughput(tmp: str) -> None:
    print(f"{'size':<9} {'frames':>6} {'maps fps':>9} {'overlay fps':>12} {'fitted matte':>12} {'replace fps':>12}")
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
        overlay_fps = []
        for matte in MATTES:
            t0 = time.perf_counter()
            list(iter_overlay(bundle, {"background": paint}, clip.frames, matte=matte))
            overlay_fps.append(t / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        list(iter_replace(bundle, {"background": paint}))
        replace_fps = t / (time.perf_counter() - t0)
        print(f"{w}x{h:<5} {t:>6} {maps_fps:>9.1f} {overlay_fps[0]:>12.1f} {overlay_fps[1]:>12.1f} {replace_fps:>12.1f}", flush=True)


def chained_flow(frames: torch.Tensor, keyframe: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline: warp the edited keyframe and its mask frame to frame with DIS flow."""
    _, bwd = dis_flow(frames.numpy(), guided=False)  # the baseline: plain frame-to-frame DIS
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


def paint_edits(clip) -> tuple[np.ndarray, np.ndarray]:
    """Edited textures: three discs on the background where frame 0 sees it away from the
    sprite, and horizontal stripes across the sprite."""
    bg, fg = clip.background.copy(), clip.sprite.copy()
    h, w = clip.frames.shape[1:3]
    sprite_x = float((clip.masks[0].sum(0) * torch.arange(w)).sum() / clip.masks[0].sum().clamp_min(1))
    side = 0.25 if sprite_x > w / 2 else 0.75
    scale = float(np.linalg.norm(clip.bg_maps[0, 0, 1] - clip.bg_maps[0, 0, 0]))  # texels per frame pixel
    colours = [(1.0, 0.9, 0.1), (0.1, 0.9, 1.0), (1.0, 0.2, 0.8)]
    for (fx, fy), colour in zip([(side - 0.1, 0.3), (side + 0.1, 0.5), (side, 0.75)], colours):
        cx, cy = clip.bg_maps[0, int(fy * h), int(fx * w)]
        cv2.circle(bg, (int(cx), int(cy)), int(0.06 * w * scale), colour, -1, lineType=cv2.LINE_AA)
    rows = np.arange(fg.shape[0])
    stripes = ((rows * 8 // fg.shape[0]) % 2 == 1)[:, None] & (clip.sprite_alpha > 0.5)
    fg[stripes] = 0.4 * fg[stripes] + 0.6 * np.array([0.2, 1.0, 0.3], np.float32)
    return bg, fg


def region_scores(out: torch.Tensor, truth: torch.Tensor, changed: torch.Tensor, masks: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{layer: (mean PSNR, worst frame)} inside the edit region `changed` [T, H, W],
    frames 1.., per layer (foreground where the sprite's opacity is at least 0.5)."""
    scores = {}
    for name, layer in (("background", masks < 0.5), ("foreground", masks >= 0.5)):
        region = changed & layer
        per = [psnr(out[t][region[t]], truth[t][region[t]]) for t in range(1, len(truth)) if region[t].sum() >= 20]
        scores[name] = (float(np.mean(per)), float(min(per))) if per else (float("nan"), float("nan"))
    return scores


def outside_score(out: torch.Tensor, truth: torch.Tensor, changed: torch.Tensor) -> float:
    """Mean PSNR over frames 1.. outside the edit region, where the true edited frames are
    the source's: paint left behind where it does not belong (on the wrong layer) shows here."""
    return float(np.mean([psnr(out[t][~changed[t]], truth[t][~changed[t]]) for t in range(1, len(truth))]))


def real_texture_accuracy(tmp: str, budget: float, preset: str, lengths: list[int], overrides: list[str]) -> None:
    if not DAVIS.is_dir():
        print(f"\nreal-texture clips skipped: {DAVIS} not found")
        return
    sets = f", --set {' '.join(overrides)}" if overrides else ""
    print(f"\nkeyframe edit on real-texture synthetic clips, 427x240 (fit: preset {preset}{sets}, {budget:g} s, no masks)")
    head = (f"{'clip':<46} {'frames':>6} {'recon':>6} {'matte':>6} | {'bg mean':>7} {'bg min':>6} {'fg mean':>7} {'fg min':>6} {'outside':>7} "
            f"| {'DIS bg':>6} {'min':>5} {'DIS fg':>6} {'min':>5} {'out':>5} | {'exact bg':>8} {'min':>5} {'exact fg':>8} {'min':>5}")
    print(head + "\n" + "-" * len(head))
    for name in SCENES:
        for n in lengths:
            clip = scene_clip(name, n)
            truth = clip.render(*paint_edits(clip))
            changed = (truth - clip.frames).abs().amax(-1) > 1e-3
            video = Video(clip.frames, clip.fps, name, (0, n))
            bundle = atlas.fit(video, Path(tmp) / f"{name}-{n}", preset, overrides, time_budget=budget, iters=1_000_000, quiet=True)
            chained = chained_flow(clip.frames, truth[0], changed[0])
            base = region_scores(chained, truth, changed, clip.masks)
            dis = " ".join(f"{base[k][0]:>6.2f} {base[k][1]:>5.2f}" for k in ("background", "foreground"))
            exact_frames = torch.stack([truth[0]] + [clip.carried_keyframe(truth[0], t) for t in range(1, n)])
            best = region_scores(exact_frames, truth, changed, clip.masks)
            exact = " ".join(f"{best[k][0]:>8.2f} {best[k][1]:>5.2f}" for k in ("background", "foreground"))
            for matte in MATTES:
                edited = edit(bundle, keyframes={0: truth[0]}, frames=clip.frames, matte=matte).frames
                ours = region_scores(edited, truth, changed, clip.masks)
                cells = " ".join(f"{ours[k][0]:>7.2f} {ours[k][1]:>6.2f}" for k in ("background", "foreground"))
                print(f"{name + ' (' + ' + '.join(SCENES[name]) + ')':<46} {n:>6} {bundle.meta.metrics['psnr_mean']:>6.2f} {matte:>6} | "
                      f"{cells} {outside_score(edited, truth, changed):>7.2f} | {dis} {outside_score(chained, truth, changed):>5.2f} | {exact}",
                      flush=True)


def splat_accuracy(densities: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)) -> None:
    if not DAVIS.is_dir():
        print(f"\nsplat accuracy skipped: {DAVIS} not found")
        return
    print("\nkeyframe 0's sprite splatted along its true mapping and rendered back, 427x240, 30 frames "
          "(dB in the sprite's edit region, frames 1..; mean / worst frame)")
    print(f"{'clip':<14} {'texels per frame-0 px':>22} {'footprint':>14} {'bilinear':>14}")
    for name in SCENES:
        clip = scene_clip(name, 30)
        truth = clip.render(*paint_edits(clip))
        changed = (truth - clip.frames).abs().amax(-1) > 1e-3
        hs, ws = clip.sprite.shape[:2]
        to_uv = lambda maps: torch.from_numpy(maps / np.array([ws, hs], np.float32))
        texel_step = torch.from_numpy(clip.fg_maps[0]).diff(dim=1).norm(dim=-1)
        per_px = float(texel_step[clip.masks[0][:, 1:] >= 0.5].median())  # sprite texels per frame-0 pixel
        uvs = [to_uv(m) for m in clip.fg_maps]  # the sprite's true atlas coordinates in each frame
        regions = changed & (clip.masks >= 0.5)
        on = clip.masks[0] >= 0.5
        for density in densities:
            w, h = round(ws / per_px * density), round(hs / per_px * density)
            cells = []
            for spread in (True, False):
                acc = SplatAccumulator(w, h)
                reach = footprint(uvs[0], w, h)[on] if spread else None
                acc.add(uvs[0][on], torch.ones(int(on.sum())), changed[0][on].float(), truth[0][on], reach)
                rgba = torch.from_numpy(acc.rgba())
                scores = []
                for t in range(1, clip.frames.shape[0]):
                    paint = sample(rgba, uvs[t])
                    out = clip.frames[t] * (1 - paint[..., 3:]) + paint[..., :3] * paint[..., 3:]
                    scores.append(psnr(out[regions[t]], truth[t][regions[t]]))
                cells.append(f"{np.mean(scores):>6.2f} / {min(scores):>5.2f}")
            print(f"{name:<14} {density:>22.2f} {cells[0]:>14} {cells[1]:>14}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-iters", type=int, default=1200)
    p.add_argument("--preset", default="default", help="preset of the accuracy fit (throughput fits use fast)")
    p.add_argument("--only", choices=["throughput", "keyframe", "real", "splat"], help="run one part")
    p.add_argument("--budget", type=float, default=120.0, help="fitting seconds per real-texture clip")
    p.add_argument("--frames", type=int, nargs="+", default=[30, 60], help="lengths of the real-texture clips")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the real-texture fits (repeatable)")
    a = p.parse_args()
    print(f"{describe()}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "throughput"):
            throughput(tmp)
        if a.only in (None, "keyframe"):
            keyframe_accuracy(tmp, a.fit_iters, a.preset)
        if a.only in (None, "real"):
            real_texture_accuracy(tmp, a.budget, a.preset, a.frames, a.overrides)
        if a.only in (None, "splat"):
            splat_accuracy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
