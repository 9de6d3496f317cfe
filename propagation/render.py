"""Atlas -> frames: composite edits through each frame's mapping.

overlay: each output frame is the source frame with the RGBA edit of each layer laid over
         it where that layer is visible: out = src + w_l * a * (s(e) - src), background
         first, so a background edit goes behind the foreground. Pixels no edit touches
         are the source pixels exactly.
replace: frames re-rendered from (edited) textures, s(sum_l w_l * tex_l(uv_l)), optionally
         plus the detail the atlas misses (source - reconstruction from the original
         textures).
s is the frame's shading (atlas.shading: its exposure and vignetting), so an edit is lit
like the frame it lands in. w_l are the fitted layer weights refined against the
source frame (matte="guided", propagation.matte) or as fitted (matte="fitted"). Edited
keyframes are rendered with the layer weights they were splatted with
(propagation.splat.keyframe_weights), so each shows its paint where it was painted, and
their painted pixels are laid over their own frames exactly (pin_keyframes).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from atlas.evaluate import FrameMaps
from atlas.io import ARRAY_SOURCE, iter_frames, probe_video, read_video, unit_float

from .matte import check_matte, guided_weights, matte_radius
from .sample import sample


def _layer_index(bundle: AtlasBundle, name: str) -> int:
    if name not in bundle.layer_names:
        raise AtlasInputError(f"no layer {name!r} in this bundle; layers: {', '.join(bundle.layer_names)}")
    return bundle.layer_names.index(name)


def overlay_frame(source: torch.Tensor, maps: FrameMaps, edits: dict[int, np.ndarray | torch.Tensor]) -> torch.Tensor:
    """One frame [H, W, 3]: RGBA edits {layer index: [h, w, 4]} laid over the source."""
    out = source.clone()
    for layer in sorted(edits):  # background (0) first, then foregrounds front to back order
        rgba = sample(edits[layer], maps.uv[..., layer, :])
        a = rgba[..., 3:] * maps.weights[..., layer : layer + 1]
        touched = a[..., 0] > 0
        out = torch.where(touched[..., None], out + a * (maps.shade(rgba[..., :3]).clamp(0.0, 1.0) - out), out)
    return out


def replace_frame(maps: FrameMaps, textures: list[np.ndarray | torch.Tensor], detail: torch.Tensor | None = None) -> torch.Tensor:
    """One frame [H, W, 3] re-rendered from per-layer textures [h, w, >=3] (+ detail)."""
    out = torch.zeros(*maps.uv.shape[:2], 3)
    for layer, tex in enumerate(textures):
        out = out + maps.weights[..., layer : layer + 1] * sample(tex, maps.uv[..., layer, :], outside="border")[..., :3]
    out = maps.shade(out)
    if detail is not None:
        out = out + detail
    return out.clamp(0.0, 1.0)


def source_frames(bundle: AtlasBundle, frames: torch.Tensor | None = None) -> torch.Tensor:
    """The frames edits are laid over: given, else the fitted source re-read from disk,
    else (source gone) the bundle's reconstruction, with a warning."""
    w, h = bundle.size
    if frames is None:
        src = bundle.meta.source
        if src.path == ARRAY_SOURCE:
            warnings.warn("the bundle was fitted from frames in memory: pass them again (frames=, or --source on the "
                          "command line) to edit over them; editing the reconstruction instead", stacklevel=2)
            return bundle.render()
        try:
            frames = read_video(src.path, frames=tuple(src.frames), size=(w, h)).frames
        except AtlasInputError as exc:
            warnings.warn(f"source video unavailable ({exc}); editing the reconstruction instead", stacklevel=2)
            return bundle.render()
    if tuple(frames.shape) != (bundle.num_frames, h, w, 3):
        raise AtlasInputError(f"source frames are {tuple(frames.shape)}, the bundle expects ({bundle.num_frames}, {h}, {w}, 3)")
    return unit_float(frames)


def stream_source(bundle: AtlasBundle, size: tuple[int, int], source: str | Path | np.ndarray | torch.Tensor | None = None
                  ) -> Iterator[torch.Tensor] | None:
    """The source frames one at a time, float32 [H, W, 3] at `size` (W, H): from `source`
    (a movie or sequence, read over the fitted frame range, or the bundle's frames
    [T, H, W, C] in memory), else the fitted source re-read from disk; None, with a
    warning, where there is nothing to read. Raises, as it reaches the end, if the source
    holds fewer frames than the bundle."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source.ndim != 4 or source.shape[0] != bundle.num_frames or source.shape[3] not in (1, 3, 4):
            raise AtlasInputError(f"source frames are {tuple(source.shape)}, the bundle expects ({bundle.num_frames}, H, W, 3)")
        return iter_frames(source, (0, None), size)
    path, span = source or bundle.meta.source.path, tuple(bundle.meta.source.frames)
    if path == ARRAY_SOURCE:
        warnings.warn("the bundle was fitted from frames in memory: pass them again to refine its layer weights "
                      "against them; writing the fitted weights", stacklevel=2)
        return None
    try:
        found = probe_video(path, span)[0] > 0
    except AtlasInputError:
        found = False
    if not found and source is not None:
        raise AtlasInputError(f"source {path}: no frames to read")
    if not found:
        warnings.warn(f"source video {path} unavailable; writing the fitted layer weights (--source to point at it)", stacklevel=2)
        return None
    return _counted(iter_frames(path, span, size), bundle.num_frames, str(path))


def _counted(images: Iterator[torch.Tensor], count: int, name: str) -> Iterator[torch.Tensor]:
    """The first `count` of images; an error if there are fewer."""
    seen = 0
    for seen, image in enumerate(images, 1):
        yield image
        if seen == count:
            return
    raise AtlasInputError(f"{name} holds {seen} frames, the bundle {count}; give its source (--source) or use --matte fitted")


def matted_maps(bundle: AtlasBundle, t: int, frame: torch.Tensor | None, matte: str, size: tuple[int, int] | None = None,
                colour: bool = True) -> FrameMaps:
    """Frame t's maps (bundle.frame_maps: at `size`, with `colour`) with the layer weights
    of `matte` (guided: refined against the source `frame` [H, W, 3] of the maps' size, the
    window scaled to it; as fitted where there is no frame; fitted)."""
    check_matte(matte)
    maps = bundle.frame_maps(t, size, colour=colour)
    if matte == "fitted" or frame is None:
        return maps
    radius = matte_radius(bundle.model, frame.shape[1] / bundle.size[0])
    return dataclasses.replace(maps, weights=guided_weights(maps.weights, frame, radius))


def _frame_maps(bundle: AtlasBundle, t: int, weights: dict[int, torch.Tensor] | None, frame: torch.Tensor | None,
                matte: str) -> FrameMaps:
    """Frame t's maps (matted_maps), with its layer weights replaced where `weights`
    {frame: [H, W, layers]} has them."""
    if weights and t in weights:
        return dataclasses.replace(bundle.frame_maps(t), weights=weights[t])
    return matted_maps(bundle, t, frame, matte)


def iter_overlay(bundle: AtlasBundle, edits: dict[str, np.ndarray], frames: torch.Tensor,
                 weights: dict[int, torch.Tensor] | None = None, matte: str = "guided") -> Iterator[torch.Tensor]:
    """Overlay RGBA edits {layer name: texture} on every frame (`weights`: see _frame_maps)."""
    by_index = {_layer_index(bundle, name): tex for name, tex in edits.items()}
    for t in range(bundle.num_frames):
        yield overlay_frame(frames[t], _frame_maps(bundle, t, weights, frames[t], matte), by_index)


def pin_keyframes(frames: Iterator[torch.Tensor], pins: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[torch.Tensor]:
    """The rendered `frames`, each edited keyframe {index: (image [H, W, 3], mask [H, W])}
    laid over its own frame by its mask: what the user painted comes back exactly there,
    not resampled through the atlas (which blurs it by up to a texel)."""
    for t, frame in enumerate(frames):
        if t in pins:
            image, mask = pins[t]
            frame = frame + mask[..., None] * (image - frame)
        yield frame


def iter_replace(bundle: AtlasBundle, textures: dict[str, np.ndarray], frames: torch.Tensor | None = None,
                 weights: dict[int, torch.Tensor] | None = None, matte: str = "guided") -> Iterator[torch.Tensor]:
    """Re-render every frame from `textures` (missing layers keep their baked texture);
    with source `frames`, add back the detail the original atlases do not reproduce
    (`weights`: see _frame_maps)."""
    for name in textures:
        _layer_index(bundle, name)
    edited = [textures.get(n, bundle.textures[n]) for n in bundle.layer_names]
    original = [bundle.textures[n] for n in bundle.layer_names]
    for t in range(bundle.num_frames):
        maps = _frame_maps(bundle, t, weights, None if frames is None else frames[t], matte)
        detail = None if frames is None else frames[t] - replace_frame(maps, original)
        yield replace_frame(maps, edited, detail)
