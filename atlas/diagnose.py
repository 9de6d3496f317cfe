"""Is each layer's mapping usable? Checked once a fit ends, reported by `atlas fit` (one
warning line each) and `atlas info`.

A layer is **degenerate** when its atlas blows up (an extent of more than MAX_EXTENT_FRAMES
frame areas) or a learned global transform no longer maps
the frame to a sane quadrilateral (atlas.initialise.well_conditioned). It **drifts** when
its long-range correspondences (atlas.longrange: pixels matched 2 to 16 frames apart) land
more than DRIFT_PX atlas pixels apart on average where the layer shows at both ends:
edits painted on it will slide. Reconstruction below LOW_PSNR dB is reported too.
"""
from __future__ import annotations

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
ADVICE = "try --masks, a shorter --frames range or a larger preset"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@torch.no_grad()
def _long_range_error(model: LayeredAtlas, pairs: torch.Tensor) -> list[np.ndarray]:
    """Per layer, |uv(a) - uv(b)| in atlas px of the correspondences where that layer's
    weight is at least 0.5 at both ends."""
    long = pairs[pairs[:, 3] - pairs[:, 0] > 1]
    if len(long) > MAX_PAIRS:
        long = long[torch.randperm(len(long), generator=torch.Generator().manual_seed(0))[:MAX_PAIRS]]
    device = next(model.parameters()).device
    if not len(long):
        return [np.zeros(0, np.float32) for _ in model.layer_names]
    xy = torch.cat([long[:, 1:3], long[:, 4:6]]).to(device)
    t = torch.cat([long[:, 0], long[:, 3]]).long().to(device)
    n = len(long)
    uv = model.uv(xy, t)
    w = model.layer_weights(model.alpha(xy, t))
    out = []
    for i, m in enumerate(model.mappings):
        shown = (w[:n, i] >= 0.5) & (w[n:, i] >= 0.5)
        err = ((uv[:n, i] - uv[n:, i]) * m.pixels_per_uv).norm(dim=-1)[shown]
        out.append(err.cpu().numpy())
    return out


def layer_health(model: LayeredAtlas, pre: Preprocessed, chains: list[Chain], textures: dict[str, np.ndarray],
                 psnr_mean: float) -> tuple[dict[str, dict], list[str]]:
    """({layer: health numbers}, warning lines) for a fitted model."""
    g = model.geom
    errors = _long_range_error(model, pre.pairs)
    health, warns = {}, []
    for i, name in enumerate(model.layer_names):
        m, chain = model.mappings[i], chains[i]
        extent = (m.pixels_per_uv / torch.tensor([g.width, g.height])).tolist()
        tex = textures[name].shape[:2]
        bad_frame = first_degenerate(m.transforms.detach().double().cpu().numpy(), g, chain.ref)
        degenerate = extent[0] * extent[1] > MAX_EXTENT_FRAMES or bad_frame is not None
        full = full_texture_size(model, i)
        err = errors[i]
        drift = float(err.mean()) if len(err) else None
        health[name] = {"extent_frames": [round(e, 2) for e in extent], "motion_model": chain.model, "break_frame": chain.break_frame,
                        "degenerate": degenerate, "degenerate_frame": bad_frame,
                        "long_range_px_mean": None if drift is None else round(drift, 3),
                        "long_range_px_p95": None if drift is None else round(float(np.quantile(err, 0.95)), 3)}
        if chain.break_frame is not None:
            warns.append(f"layer {name}: {_a(chain.broken_model)} motion does not hold the shot past frame {chain.break_frame} "
                         f"(the camera turns too far for one atlas with it); fitted with {_a(chain.model)} motion instead")
        if degenerate:
            where = f" from frame {bad_frame}" if bad_frame is not None else ""
            warns.append(f"layer {name}: the mapping is degenerate{where} (atlas {extent[0]:.1f} x {extent[1]:.1f} frames, texture "
                         f"{tex[1]}x{tex[0]}); edits will not hold: {ADVICE}")
        elif full != (tex[1], tex[0]):  # baked smaller than the extent needs: past the texture cap
            warns.append(f"layer {name}: its atlas needs {full[0]}x{full[1]} texels at the source's density, more than the "
                         f"texture cap; baked at {tex[1]}x{tex[0]}, so it is softer than the source")
        if not degenerate and drift is not None and drift > DRIFT_PX:
            warns.append(f"layer {name}: the mapping drifts (long-range correspondences land {drift:.1f} atlas px apart on "
                         f"average, more than {DRIFT_PX:g}); edits will slide: {ADVICE}")
    if psnr_mean < LOW_PSNR:
        warns.append(f"the reconstruction is poor ({psnr_mean:.1f} dB mean PSNR, below {LOW_PSNR:g}): {ADVICE}")
    return health, warns
