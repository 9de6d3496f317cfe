"""Bake each layer's colour field into an RGBA atlas texture.

The texture spans the layer's uv range at `density` texels per source pixel (>= 1 keeps
the atlas at least as sharp as the video). A = 1 where some frame sees that texel (a
pixel whose layer weight exceeds 0.5 lands there), dilated by one texel.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .evaluate import FrameMaps, pixel_grid
from .model import LayeredAtlas

# the texture cap: a panning 4K plate's atlas is many thousand texels wide; past these a
# mapping has blown up (atlas.diagnose), and its texture (16 bytes a texel as float RGBA)
# would not fit in memory
MAX_TEXTURE_SIDE = 16384
MAX_TEXELS = 1 << 26


def full_texture_size(model: LayeredAtlas, layer: int, density: float = 1.0) -> tuple[int, int]:
    """(width, height) covering a layer's extent at `density` texels per source pixel."""
    w, h = (max(16, math.ceil(v)) for v in (model.mappings[layer].pixels_per_uv * density).tolist())
    return w, h


def texture_size(model: LayeredAtlas, layer: int, density: float = 1.0) -> tuple[int, int]:
    """(width, height) of a layer's baked texture: :func:`full_texture_size`, shrunk (at
    the same aspect) to at most MAX_TEXTURE_SIDE on a side and MAX_TEXELS in all."""
    w, h = full_texture_size(model, layer, density)
    scale = min(1.0, MAX_TEXTURE_SIDE / max(w, h), math.sqrt(MAX_TEXELS / (w * h)))
    return max(16, int(w * scale)), max(16, int(h * scale))


class Coverage:
    """Per layer, which texels the video shows (a pixel whose layer weight exceeds 0.5 lands
    there), accumulated one frame at a time so a fit never holds every frame's maps."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes
        self.seen = [np.zeros((h, w), bool) for (w, h) in sizes]

    def add(self, fm: FrameMaps) -> None:
        for i, (w, h) in enumerate(self.sizes):
            seen = fm.weights[..., i] > 0.5
            uv = fm.uv[..., i, :][seen]
            tx = (uv[:, 0] * w).floor().long()
            ty = (uv[:, 1] * h).floor().long()
            ok = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
            self.seen[i][ty[ok].numpy(), tx[ok].numpy()] = True

    def masks(self) -> list[np.ndarray]:
        """Boolean [h, w] per layer, dilated by one texel."""
        kernel = np.ones((3, 3), np.uint8)
        return [cv2.dilate(s.astype(np.uint8), kernel) > 0 for s in self.seen]


@torch.no_grad()
def bake(model: LayeredAtlas, seen: list[np.ndarray], chunk: int = 1 << 16) -> dict[str, np.ndarray]:
    """{layer name: float32 RGBA [h, w, 4]} from the model's colour fields; alpha is each
    layer's `seen` mask (see :class:`Coverage`), whose shape sets the texture size."""
    device = next(model.parameters()).device
    out = {}
    for i, name in enumerate(model.layer_names):
        h, w = seen[i].shape
        uv = (pixel_grid(h, w, device) + 0.5) / torch.tensor([w, h], device=device, dtype=torch.float32)
        rgb = torch.cat([model.layer_colour(i, uv[s : s + chunk]) for s in range(0, uv.shape[0], chunk)])
        out[name] = np.concatenate([rgb.reshape(h, w, 3).cpu().numpy(), seen[i][..., None].astype(np.float32)], axis=-1)
    return out
