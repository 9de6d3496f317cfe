"""Where on an atlas a prompt edit applies, and putting a generated crop back.

Atlases can be larger than a diffusion model's working resolution, so editors work on the
region's bounding box (plus a margin of context) and paste the result back with a feather
that falls to zero at the region's border: nothing outside the region changes.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError

from .manual import load_image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def atlas_region(bundle: AtlasBundle, layer: str, mask: str | Path | np.ndarray | None = None,
                 sam_checkpoint: str | None = None, sam_prompt: str | None = None) -> np.ndarray:
    """bool [h, w]: a user mask (white = edit), SAM prompted on the atlas, or by default every
    texel the video shows of the layer (its baked coverage)."""
    if layer not in bundle.layer_names:
        raise AtlasInputError(f"no layer {layer!r}; layers: {', '.join(bundle.layer_names)}")
    tex = bundle.textures[layer]
    h, w = tex.shape[:2]
    if mask is not None:
        arr = load_image(mask)[..., :3].mean(-1)
        if arr.shape != (h, w):
            raise AtlasInputError(f"region mask is {arr.shape[1]}x{arr.shape[0]}; the {layer} atlas is {w}x{h}")
        region = arr > 0.5
    elif sam_checkpoint:
        from atlas.preprocess import sam_masks

        region = sam_masks(tex[None, ..., :3], sam_checkpoint, sam_prompt or f"{w / 2},{h / 2}")[0] > 0.5
    else:
        region = tex[..., 3] > 0.5
    if not region.any():
        raise AtlasInputError(f"the edit region on the {layer} atlas is empty")
    return region


def bounding_box(region: np.ndarray, margin: int | None = None) -> Box:
    """The region's box plus `margin` texels of context (default: 1/32 of the atlas's long side)."""
    if margin is None:
        margin = max(4, max(region.shape) // 32)
    ys, xs = np.nonzero(region)
    h, w = region.shape
    return (max(0, int(xs.min()) - margin), max(0, int(ys.min()) - margin),
            min(w, int(xs.max()) + 1 + margin), min(h, int(ys.max()) + 1 + margin))


def feather(region: np.ndarray, radius: int | None = None) -> np.ndarray:
    """float [h, w] in [0, 1]: 1 deep inside the region, ramping to 0 at its border over
    `radius` texels (default: 1/128 of the atlas's long side), 0 outside."""
    if radius is None:
        radius = max(1, max(region.shape) // 128)
    if radius <= 0:
        return region.astype(np.float32)
    inside = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    return np.clip(inside / radius, 0.0, 1.0).astype(np.float32) * region


def paste(shape: tuple[int, int], crop: np.ndarray, box: Box, alpha: np.ndarray) -> np.ndarray:
    """RGBA [h, w, 4] edit: `crop` (RGB of the box) with opacity `alpha` (full atlas size,
    zero outside the box)."""
    x0, y0, x1, y1 = box
    out = np.zeros((*shape, 4), np.float32)
    out[y0:y1, x0:x1, :3] = crop
    out[..., 3] = alpha
    return out
