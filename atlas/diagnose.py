"""Is each layer's mapping usable? Checked once a fit ends, reported by `atlas fit` (one
warning line each) and `atlas info`.

A layer is **degenerate** when its atlas blows up (an extent of more than MAX_EXTENT_FRAMES
frame areas) or a learned global transform no longer maps
the frame to a sane quadrilateral (atlas.initialise.well_conditioned). It **drifts** when
its long-range correspondences (atlas.longrange: pixels matched 2 to 16 frames apart) land
more than DRIFT_PX atlas pixels apart on average where the layer shows at both ends:
edits painted on it will slide. A drifting layer's warning says in which frames (each
frame's median over the correspondences with an end there, where there are at least
MIN_FRAME_PAIRS: part of an object that the fit left in the layer lands far off in every
frame it crosses, and a mean would name those frames however well the layer holds there)
and the longest run of frames where it holds (at least MIN_HELD_FRAMES frames and
MIN_HELD_SHARE of the shot: a shorter one is no shot to fit), a --frames range the user
can fit on its own. Reconstruction below LOW_PSNR dB is reported too.

Health numbers index the fitted frames (0 = the first fitted one); warnings speak the
source's frame numbers, the ones --frames takes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .bake import full_texture_size
from .initialise import Chain, first_degenerate
from .model import LayeredAtlas
from .preprocess import Preprocessed

MAX_EXTENT_FRAMES = 64.0
DRIFT_PX = 2.0
LOW_PSNR = 22.0
MAX_PAIRS = 20000
MIN_FRAME_PAIRS = 20
MIN_HELD_FRAMES = 4
MIN_HELD_SHARE = 0.1
ADVICE = "try --masks, a shorter --frames range or a larger preset"
ADVICE_MASKED = "try a shorter --frames range or a larger preset"  # where the masks were given


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@torch.no_grad()
def _long_range_error(model: LayeredAtlas, pairs: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (|uv(a) - uv(b)| in atlas px [M], their frames (t, t2) [M, 2]) of the
    correspondences where that layer's weight is at least 0.5 at both ends."""
    long = pairs[pairs[:, 3] - pairs[:, 0] > 1]
    if len(long) > MAX_PAIRS:
        long = long[torch.randperm(len(long), generator=torch.Generator().manual_seed(0))[:MAX_PAIRS]]
    device = next(model.parameters()).device
    if not len(long):
        return [(np.zeros(0, np.float32), np.zeros((0, 2), np.int64)) for _ in model.layer_names]
    xy = torch.cat([long[:, 1:3], long[:, 4:6]]).to(device)
    t = torch.cat([long[:, 0], long[:, 3]]).long().to(device)
    n = len(long)
    uv = model.uv(xy, t)
    w = model.layer_weights(model.alpha(xy, t))
    frames = torch.stack([t[:n], t[n:]], dim=-1)
    out = []
    for i, m in enumerate(model.mappings):
        shown = (w[:n, i] >= 0.5) & (w[n:, i] >= 0.5)
        err = ((uv[:n, i] - uv[n:, i]) * m.pixels_per_uv).norm(dim=-1)[shown]
        out.append((err.cpu().numpy(), frames[shown].cpu().numpy()))
    return out


def drift_by_frame(err: np.ndarray, frames: np.ndarray, num_frames: int) -> np.ndarray:
    """[T] median error of the correspondences (errors [M], frames (t, t2) [M, 2]) with an
    end in each frame; NaN (unmeasured) where fewer than MIN_FRAME_PAIRS have: a handful of
    matches, one of them wrong, would name a frame as the worst."""
    ends, errs = frames.ravel(), np.repeat(err, 2).astype(np.float64)
    counts = np.bincount(ends, minlength=num_frames)
    by_frame = np.split(errs[np.argsort(ends, kind="stable")], np.cumsum(counts)[:-1])
    return np.array([np.median(e) if len(e) >= MIN_FRAME_PAIRS else np.nan for e in by_frame])


def held_run(per_frame: np.ndarray, limit: float, min_frames: int = 2) -> tuple[int, int] | None:
    """The longest run [a, b) of at least `min_frames` frames none of whose errors exceeds
    `limit` and at least two of which were measured (unmeasured frames, NaN, do not break
    a run); None if there is no such run."""
    best, start = None, 0
    for end in range(len(per_frame) + 1):
        if end == len(per_frame) or per_frame[end] > limit:
            measured = np.count_nonzero(~np.isnan(per_frame[start:end]))
            length = end - start
            if measured >= 2 and length >= min_frames and (best is None or length > best[1] - best[0]):
                best = (start, end)
            start = end + 1
    return best


def _drift_warning(name: str, drift: float, per_frame: np.ndarray, first_frame: int, advice: str) -> str:
    """The one-line warning for a drifting layer: where it drifts, and where it holds."""
    over = np.flatnonzero(per_frame > DRIFT_PX)  # NaN (unmeasured) compares False
    where = ""
    if len(over):  # else the error is spread over frames too thinly matched to name
        worst = int(np.nanargmax(per_frame))
        where = (f"; in frames {over[0] + first_frame}-{over[-1] + first_frame}, up to {per_frame[worst]:.1f} px at frame "
                 f"{worst + first_frame}")
    held = held_run(per_frame, DRIFT_PX, max(MIN_HELD_FRAMES, math.ceil(MIN_HELD_SHARE * len(per_frame))))
    span = None if held is None else f"{held[0] + first_frame}:{held[1] + first_frame}"
    hint = advice if span is None else f"it holds in frames {span} (fit those alone with --frames {span}), or {advice}"
    return (f"layer {name}: the mapping drifts (long-range correspondences land {drift:.1f} atlas px apart on average, more "
            f"than {DRIFT_PX:g}{where}); edits will slide: {hint}")


def layer_health(model: LayeredAtlas, pre: Preprocessed, chains: list[Chain], textures: dict[str, np.ndarray],
                 psnr_mean: float, first_frame: int = 0) -> tuple[dict[str, dict], list[str]]:
    """({layer: health numbers}, warning lines) for a fitted model whose first frame is the
    source's `first_frame`."""
    g = model.geom
    errors = _long_range_error(model, pre.pairs)
    health, warns = {}, []
    advice = ADVICE if pre.mask_source == "motion" else ADVICE_MASKED
    for i, name in enumerate(model.layer_names):
        m, chain = model.mappings[i], chains[i]
        extent = (m.pixels_per_uv / torch.tensor([g.width, g.height])).tolist()
        tex = textures[name].shape[:2]
        bad_frame = first_degenerate(m.transforms.detach().double().cpu().numpy(), g, chain.ref)
        degenerate = extent[0] * extent[1] > MAX_EXTENT_FRAMES or bad_frame is not None
        full = full_texture_size(model, i)
        err, frames = errors[i]
        drift = float(err.mean()) if len(err) else None
        per_frame = drift_by_frame(err, frames, g.num_frames)
        health[name] = {"extent_frames": [round(e, 2) for e in extent], "motion_model": chain.model, "break_frame": chain.break_frame,
                        "degenerate": degenerate, "degenerate_frame": bad_frame,
                        "long_range_px_mean": None if drift is None else round(drift, 3),
                        "long_range_px_p95": None if drift is None else round(float(np.quantile(err, 0.95)), 3),
                        "long_range_px_per_frame": [None if np.isnan(e) else round(float(e), 3) for e in per_frame]}
        if chain.break_frame is not None:
            warns.append(f"layer {name}: {_a(chain.broken_model)} motion does not hold the shot past frame {chain.break_frame + first_frame} "
                         f"(the camera turns too far for one atlas with it); fitted with {_a(chain.model)} motion instead")
        if degenerate:
            where = f" from frame {bad_frame + first_frame}" if bad_frame is not None else ""
            warns.append(f"layer {name}: the mapping is degenerate{where} (atlas {extent[0]:.1f} x {extent[1]:.1f} frames, texture "
                         f"{tex[1]}x{tex[0]}); edits will not hold: {advice}")
        elif full != (tex[1], tex[0]):  # baked smaller than the extent needs: past the texture cap
            warns.append(f"layer {name}: its atlas needs {full[0]}x{full[1]} texels at the source's density, more than the "
                         f"texture cap; baked at {tex[1]}x{tex[0]}, so it is softer than the source")
        if not degenerate and drift is not None and drift > DRIFT_PX:
            warns.append(_drift_warning(name, drift, per_frame, first_frame, advice))
    if psnr_mean < LOW_PSNR:
        warns.append(f"the reconstruction is poor ({psnr_mean:.1f} dB mean PSNR, below {LOW_PSNR:g}): {advice}")
    return health, warns
