"""Point tracking through the atlas, scored with the TAP-Vid protocol.

    python bench/track_bench.py [--presets fast default] [--budget 90] [--size 427x240]
                                [--clips blackswan ...] [--device auto] [--set key=value ...] [--seeds 0 1 ...]
                                [--frame-step N]

For every clip (the DAVIS clips with their human-annotated TAP-Vid tracks, first 32
frames; two real-texture synthetic clips, both bench/scenes.py; and a procedural synthetic
clip, with exact ground truth for 256 tracks each), fits a bundle for `--budget`
seconds, queries each ground-truth track at its first visible frame, and scores the atlas's
tracks (atlas.track_metrics: delta_avg, average Jaccard, occlusion accuracy, in 256x256
coordinates; also delta_avg split by whether the query lies on the ground-truth
foreground, the share of tracks that followed the right layer, and the foreground IoU
of the motion-bootstrap masks and of the fitted opacity against the ground-truth masks)
beside two baselines on the same frames: chained OpenCV DIS flow (plain frame-to-frame
DIS, without the fit's guided starts; never occluded) and
zero motion, with the atlas's delta_avg minus chained DIS's and its 90% bootstrap interval
over the clip's tracks (atlas.track_metrics.delta_avg_difference: a clip's few dozen
tracks make a gap of a few points chance). `--frame-step N` keeps every Nth of those
frames (and of their ground truth): the same shots with N times their motion, as a fast,
turning camera gives. `--gt-masks` fits the DAVIS clips with their ground-truth masks
(the ceiling of a perfect foreground guess). Each fit runs in a fresh
subprocess. Prints one table per preset and seed with the means, and the time to track 1,000
points through the frames; with several `--seeds`, each clip's spread over them.
`--json` rows also hold "atlas_by_weight": the same fit's tracks with each query's layer
taken from the (checked) compositing weights alone (atlas.track without its flow check), "step":
the median error of one-frame steps (queried at every visible ground-truth point, predicted
one frame on) of the atlas and of DIS, on the foreground and the background: per-step
accuracy, apart from drift; and "per_track": each track's query, layer and mean error beside
DIS's (which tracks a gap comes from).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from environment import describe, versions
from scenes import CLIPS, DATA, SCENES, SYNTHETIC, available, scene_clip

FRAMES = 32


def synthetic_truth(width: int, height: int, n: int = 256, seed: int = 0):
    """A synthetic clip and ground-truth tracks: background points (hidden while the sprite
    covers them or outside the frame) and sprite points, queried on frame 0."""
    from atlas.synthetic import make_clip

    clip = make_clip(num_frames=FRAMES, width=width, height=height, seed=seed)
    rng = np.random.default_rng(seed)
    p0 = rng.uniform([1, 1], [width - 1, height - 1], (n, 2))
    centre, radius = clip.sprite_centre, clip.sprite_radius
    on_sprite = ((p0 - centre[0]) ** 2).sum(-1) < radius**2
    bg = p0[:, None] - (clip.camera - clip.camera[0])[None]
    fg = p0[:, None] + (centre - centre[0])[None]
    points = np.where(on_sprite[:, None, None], fg, bg)
    covered = ((points - centre[None]) ** 2).sum(-1) < radius**2
    outside = (points[..., 0] < 0) | (points[..., 0] > width) | (points[..., 1] < 0) | (points[..., 1] > height)
    occluded = outside | (covered & ~on_sprite[:, None])
    return clip, points.astype(np.float32), occluded


def warped_truth(clip, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact tracks [n, T, 2] and occlusion [n, T] of a real-texture clip: half of the
    queries on the sprite, half on the background, all on frame 0."""
    rng = np.random.default_rng(seed)
    fg = clip.masks[0].numpy() >= 0.5
    picks = []
    for sel in (fg, ~fg):
        ys, xs = np.nonzero(sel)
        i = rng.choice(len(xs), n // 2, replace=False)
        picks.append(np.stack([xs[i] + 0.5, ys[i] + 0.5, np.zeros(n // 2)], 1))
    points, occluded, _ = clip.true_tracks(np.concatenate(picks))
    return points, occluded


def worker(clip: str, preset: str, budget: float, size: str, device: str, overrides: list[str], gt_masks: bool = False,
           seed: int = 0, frame_step: int = 1) -> dict:
    import atlas
    from atlas.io import Video, parse_size, read_video
    from atlas.preprocess import dis_flow, read_masks
    from atlas.track import track_points
    from atlas.track_metrics import chained_flow_tracks, delta_avg_difference, query_first, tapvid_metrics

    w, h = parse_size(size)
    if clip in SCENES:
        warped = scene_clip(clip, FRAMES, w, h)
        points, occluded = warped_truth(warped)
        video = Video(warped.frames, warped.fps, clip, (0, FRAMES))
        masks = warped.masks.numpy()
    elif clip == SYNTHETIC:
        synth, points, occluded = synthetic_truth(w, h)
        video = Video(synth.frames, synth.fps, SYNTHETIC, (0, FRAMES))
        masks = synth.masks.numpy()
    else:
        video = read_video(DATA / "davis" / clip / "frames", frames=(0, FRAMES), size=(w, h))
        gt = np.load(DATA / "tapvid" / f"{clip}.npz")
        points = gt["points"] * np.array([w / float(gt["width"]), h / float(gt["height"])], np.float32)
        occluded = gt["occluded"]
        masks = read_masks(DATA / "davis" / clip / "masks", FRAMES, (0, FRAMES), (w, h))
    if frame_step > 1:  # every frame_step-th frame: the same shot, its motion frame_step times as fast
        frames = video.frames[::frame_step].contiguous()
        video = Video(frames, video.fps / frame_step, video.source, (0, len(frames)))  # a range the bundle can hold
        points, occluded, masks = points[:, ::frame_step], occluded[:, ::frame_step], masks[::frame_step]
    num_frames = len(video.frames)
    masks_dir = None
    if gt_masks:
        if clip in SCENES or clip == SYNTHETIC or frame_step > 1:
            raise SystemExit(f"--gt-masks: {clip}'s masks for these frames are in memory only")
        masks_dir = str(DATA / "davis" / clip / "masks")
    seen = ~occluded.all(axis=1)
    points, occluded = points[seen], occluded[seen]
    q = query_first(occluded)
    queries = np.concatenate([points[np.arange(len(q)), q], q[:, None].astype(np.float32)], axis=1)
    qx = np.clip(queries[:, 0].astype(int), 0, w - 1)
    qy = np.clip(queries[:, 1].astype(int), 0, h - 1)
    on_fg = masks[q, qy, qx] > 0.5  # the query lies on the ground-truth foreground
    with tempfile.TemporaryDirectory() as tmp:
        bundle = atlas.fit(video, Path(tmp) / "b", preset, overrides, masks=masks_dir, time_budget=budget or None, iters=1_000_000 if budget else None,
                           device=device, seed=seed, quiet=True)
    t0 = time.perf_counter()
    tracks = bundle.track(queries)
    track_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = np.stack(np.meshgrid(np.linspace(1, w - 1, 40), np.linspace(1, h - 1, 25)), -1).reshape(-1, 2)
    bundle.track(np.concatenate([grid, np.zeros((len(grid), 1))], 1))
    thousand_s = time.perf_counter() - t0
    frames = video.frames.numpy()
    fwd, _ = dis_flow(frames, guided=False)  # the baseline: plain frame-to-frame DIS
    never = np.zeros_like(occluded)
    dis = chained_flow_tracks(fwd, queries)
    by_weight = track_points(bundle.model, queries)  # each query's layer by its compositing weight alone, no flow check
    scores = {
        "atlas": tapvid_metrics(points, occluded, tracks.positions, ~tracks.visible, (w, h)),
        "atlas_by_weight": tapvid_metrics(points, occluded, by_weight.positions, ~by_weight.visible, (w, h)),
        "dis": tapvid_metrics(points, occluded, dis, never, (w, h)),
        "zero": tapvid_metrics(points, occluded, np.repeat(queries[:, None, :2], num_frames, 1), never, (w, h)),
    }
    diff, lo, hi = delta_avg_difference(points, occluded, tracks.positions, dis, (w, h))
    scores["vs_dis"] = {"delta_avg": diff, "low": lo, "high": hi}  # and its 90% interval over the clip's tracks
    # the same split by where the query lies (ground-truth mask), and whether the track
    # followed the right layer (a foreground query should follow a foreground layer)
    for part, sel in (("fg", on_fg), ("bg", ~on_fg)):
        d_avg = lambda pred, hidden: tapvid_metrics(points[sel], occluded[sel], pred[sel], hidden[sel], (w, h))["delta_avg"] if sel.any() else float("nan")
        scores[part] = {"tracks": int(sel.sum()), "atlas": d_avg(tracks.positions, ~tracks.visible), "dis": d_avg(dis, never)}
    scores["step"] = one_frame_steps(bundle, points, occluded, masks, fwd)
    scores["per_track"] = per_track(points, occluded, queries, on_fg, tracks, dis, (w, h))
    followed_fg = np.array([name != "background" for name in tracks.layers])
    scores["layer_acc"] = 100.0 * float((followed_fg == on_fg).mean())
    # foreground IoU over the clip (fitted without masks): of the motion bootstrap, and of the fitted opacity
    gt_fg = masks > 0.5
    iou = lambda pred: float((pred & gt_fg).sum() / max((pred | gt_fg).sum(), 1))
    fitted = np.stack([1.0 - bundle.frame_maps(t).weights[..., 0].numpy() for t in range(num_frames)]) > 0.5
    scores["iou"] = {"bootstrap": iou(bundle.cache.masks.numpy() > 0.5) if bundle.cache is not None else float("nan"), "fitted": iou(fitted)}
    m = bundle.meta
    return {"clip": clip, "frames": num_frames, "psnr": m.metrics["psnr_mean"], "fit_s": m.timings["fit_s"], "tracks": len(queries), "track_s": track_s,
            "thousand_s": thousand_s, "atlas_size": [layer.atlas_size for layer in m.layers], **scores}


def error_256(pred: np.ndarray, truth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Distances [...] between positions [..., 2] of a (width, height) frame, in the 256x256
    pixels the TAP-Vid metrics use."""
    return np.linalg.norm((pred - truth) * (256.0 / np.array(size, np.float64)), axis=-1)


def per_track(points: np.ndarray, occluded: np.ndarray, queries: np.ndarray, on_fg: np.ndarray, tracks, dis: np.ndarray,
              size: tuple[int, int]) -> list[dict]:
    """Each track's query, whether it lies on the ground-truth foreground, the layer it
    followed, and the mean error (256x256 px, over the frames where the ground truth shows
    it) of the atlas's track and of chained DIS: which tracks a clip's gap to DIS comes from."""
    err = lambda pred: np.where(occluded, np.nan, error_256(pred, points, size))
    atlas_err, dis_err = np.nanmean(err(tracks.positions), axis=1), np.nanmean(err(dis), axis=1)
    return [{"query": [round(float(v), 1) for v in q], "fg": bool(f), "layer": layer, "atlas_px": round(float(a), 2), "dis_px": round(float(d), 2)}
            for q, f, layer, a, d in zip(queries, on_fg, tracks.layers, atlas_err, dis_err)]


def one_frame_steps(bundle, points: np.ndarray, occluded: np.ndarray, masks: np.ndarray, fwd: np.ndarray) -> dict:
    """Median error (256x256 px) of one-frame steps: every ground-truth point visible in frames t
    and t + 1, queried at t, predicted at t + 1 by the atlas and by the DIS flow, by where it lies
    (ground-truth mask at t). Tells per-step inaccuracy from drift: a track can lose to chained
    flow through either."""
    from atlas.track import bilinear

    h, w = masks.shape[1:3]
    i, t = np.nonzero(~occluded[:, :-1] & ~occluded[:, 1:])
    start = points[i, t]
    queries = np.concatenate([start, t[:, None].astype(np.float32)], axis=1)
    err = lambda pred: error_256(pred, points[i, t + 1], (w, h))
    atlas_err = err(bundle.track(queries).positions[np.arange(len(i)), t + 1])
    dis_err = err(start + bilinear(fwd, t, start))
    on_fg = masks[t, np.clip(start[:, 1].astype(int), 0, h - 1), np.clip(start[:, 0].astype(int), 0, w - 1)] > 0.5
    median = lambda e, sel: float(np.median(e[sel])) if sel.any() else float("nan")
    return {part: {"steps": int(sel.sum()), "atlas": median(atlas_err, sel), "dis": median(dis_err, sel)}
            for part, sel in (("fg", on_fg), ("bg", ~on_fg))}


def interval(d: dict) -> str:
    """A gap and its interval, e.g. "-3.8 [-10.9, +1.7]"."""
    return f"{d['delta_avg']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def nanmean(rows: list[dict], part: str, method: str) -> float:
    """Mean over the clips that have tracks on that part (blackswan's are all on the swan)."""
    vals = [r[part][method] for r in rows if r[part]["tracks"]]
    return float(np.mean(vals)) if vals else float("nan")


def run_table(a: argparse.Namespace, clips: list[str], preset: str, seed: int) -> list[dict]:
    """Fit and score every clip with one preset and seed, printing a row per clip and the means."""
    every = f", one frame in {a.frame_step} ({len(range(0, FRAMES, a.frame_step))} frames)" if a.frame_step > 1 else ""
    print(f"\npreset {preset}, {a.size}, first {FRAMES} frames{every}, fit budget {a.budget:g} s, device {a.device}, seed {seed}"
          + (", ground-truth masks" if a.gt_masks else ""))
    head = (f"{'clip':<20}{'PSNR':>7}{'fit s':>7}{'d_avg':>7}{'AJ':>7}{'OA':>7}{'DIS d':>7}{'DIS AJ':>7}{'zero d':>7}"
            f"{'vs DIS [90% over tracks]':>26}{'fg d':>7}{'DIS':>6}{'bg d':>7}{'DIS':>6}{'layer%':>7}{'IoU0':>6}{'IoU':>6}  bg atlas")
    print(head)
    print("-" * len(head))
    done = []
    for clip in clips:
        cmd = [sys.executable, __file__, "--worker", clip, preset, "--budget", str(a.budget), "--size", a.size, "--device", a.device, "--seed", str(seed),
               "--frame-step", str(a.frame_step)]
        for o in a.overrides:
            cmd += ["--set", o]
        cmd += ["--gt-masks"] if a.gt_masks else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{clip:<20} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["preset"] = preset
        r["seed"] = seed
        r["libraries"] = versions()
        done.append(r)
        bg = r["atlas_size"][0]
        print(f"{clip:<20}{r['psnr']:>7.2f}{r['fit_s']:>7.0f}{r['atlas']['delta_avg']:>7.1f}{r['atlas']['aj']:>7.1f}"
              f"{r['atlas']['oa']:>7.1f}{r['dis']['delta_avg']:>7.1f}{r['dis']['aj']:>7.1f}{r['zero']['delta_avg']:>7.1f}"
              f"{interval(r['vs_dis']):>26}{r['fg']['atlas']:>7.1f}{r['fg']['dis']:>6.1f}{r['bg']['atlas']:>7.1f}{r['bg']['dis']:>6.1f}{r['layer_acc']:>7.1f}"
              f"{r['iou']['bootstrap']:>6.2f}{r['iou']['fitted']:>6.2f}  {bg[0]}x{bg[1]}",
              flush=True)
    for label, sel in (("mean (real clips)", [r for r in done if r["clip"] in CLIPS]), ("mean (all)", done)):
        if sel:
            mean = lambda f: float(np.mean([f(r) for r in sel]))  # noqa: E731
            print(f"{label:<20}{mean(lambda r: r['psnr']):>7.2f}{mean(lambda r: r['fit_s']):>7.0f}"
                  f"{mean(lambda r: r['atlas']['delta_avg']):>7.1f}{mean(lambda r: r['atlas']['aj']):>7.1f}"
                  f"{mean(lambda r: r['atlas']['oa']):>7.1f}{mean(lambda r: r['dis']['delta_avg']):>7.1f}"
                  f"{mean(lambda r: r['dis']['aj']):>7.1f}{mean(lambda r: r['zero']['delta_avg']):>7.1f}{'':>26}"
                  f"{nanmean(sel, 'fg', 'atlas'):>7.1f}{nanmean(sel, 'fg', 'dis'):>6.1f}{nanmean(sel, 'bg', 'atlas'):>7.1f}"
                  f"{nanmean(sel, 'bg', 'dis'):>6.1f}{mean(lambda r: r['layer_acc']):>7.1f}"
                  f"{mean(lambda r: r['iou']['bootstrap']):>6.2f}{mean(lambda r: r['iou']['fitted']):>6.2f}")
    if done:
        below = [r["clip"] for r in done if r["atlas"]["delta_avg"] < r["dis"]["delta_avg"]]
        surely = [r["clip"] for r in done if r["vs_dis"]["high"] < 0]
        print(f"atlas below chained DIS on: {', '.join(below) or 'none'}; "
              f"with its whole 90% interval below 0 on: {', '.join(surely) or 'none'}")
        print(f"1,000 tracks through {done[0]['frames']} frames: {np.median([r['thousand_s'] for r in done]):.2f} s (median over clips)")
    return done


def print_seed_spread(by_seed: dict[int, list[dict]]) -> None:
    """Each clip's delta_avg and AJ over the seeds (mean, lowest, highest) and the real
    clips' mean per seed: a change to the fit that moves a clip by less than its spread
    here has not shown anything on that clip."""
    seeds = list(by_seed)
    print(f"\nover seeds {', '.join(map(str, seeds))}: mean [lowest, highest]")
    print(f"{'clip':<20}{'d_avg':>22}{'AJ':>22}{'atlas - DIS':>22}")
    per_clip: dict[str, list[dict]] = {}
    for done in by_seed.values():
        for r in done:
            per_clip.setdefault(r["clip"], []).append(r)
    spread = lambda vals: f"{np.mean(vals):.1f} [{min(vals):.1f}, {max(vals):.1f}]"  # noqa: E731
    for clip, rs in per_clip.items():
        print(f"{clip:<20}{spread([r['atlas']['delta_avg'] for r in rs]):>22}{spread([r['atlas']['aj'] for r in rs]):>22}"
              f"{spread([r['vs_dis']['delta_avg'] for r in rs]):>22}")
    real = {seed: [r for r in done if r["clip"] in CLIPS] for seed, done in by_seed.items()}
    if all(real.values()):
        means = [float(np.mean([r["atlas"]["delta_avg"] for r in rs])) for rs in real.values()]
        ajs = [float(np.mean([r["atlas"]["aj"] for r in rs])) for rs in real.values()]
        print(f"{'mean (real clips)':<20}{spread(means):>22}{spread(ajs):>22}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["fast", "default"])
    p.add_argument("--budget", type=float, default=90.0, help="fitting seconds per clip (0: the preset's iterations)")
    p.add_argument("--size", default="427x240")
    p.add_argument("--clips", nargs="+", default=CLIPS + list(SCENES) + [SYNTHETIC])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--json", help="also write every row to this JSON file")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="the fits' seeds: a table per seed, then each clip's spread over them (how much a row moves by chance)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a worker's seed
    p.add_argument("--gt-masks", action="store_true", help="fit the DAVIS clips with their ground-truth masks (the ceiling of a perfect foreground guess)")
    p.add_argument("--frame-step", type=int, default=1,
                   help="fit and score every Nth of the first 32 frames: the same shots with N times their motion (fast cameras)")
    p.add_argument("--worker", nargs=2, metavar=("CLIP", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.frame_step < 1:
        p.error("--frame-step must be at least 1")
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], a.budget, a.size, a.device, a.overrides, a.gt_masks, a.seed, a.frame_step)))
        return 0
    clips = available(a.clips, tracks=True)
    rows = []
    print(describe())
    for preset in a.presets:
        by_seed = {seed: run_table(a, clips, preset, seed) for seed in a.seeds}
        if len(a.seeds) > 1:
            print_seed_spread(by_seed)
        rows += [r for done in by_seed.values() for r in done]
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
