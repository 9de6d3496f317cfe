"""Per-frame shading: the colour changes that belong to the camera, not to the surfaces.

Auto exposure, white balance drifting, vignetting and broad light changes (a cloud, a
shadow across the whole view) change a surface's colour from frame to frame. An atlas
holds one colour per surface point, so without a model of them the fit either averages
them away (the reconstruction misses every frame a little) or bends the mapping to find a
patch of texture with the right brightness (the surface slides). Here each frame's
composite is seen through a smooth gain and an offset in frame space:

    frame(x, y) = gain_t(x, y) * sum_l weight_l * atlas_l(uv_l) + offset_t

with log gain_t a quadratic in (x, y) per channel (6 coefficients) and offset_t one
number per channel, 21 numbers a frame. A quadratic cannot follow an object or a texture,
only what is smooth across the whole frame. The coefficients are centred over the shot
(their mean over the frames is zero): the atlas then holds the colours the shot shows on
average, as an artist painting on it expects, and not a copy scaled by some constant the
gains undo.

Edits go through the same shading: a propagated atlas edit takes each frame's exposure,
and an edited keyframe is un-shaded before it is sent into the atlas (propagation).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

SHADING_MODES = ("smooth", "none")
BASIS_TERMS = 6  # 1, x, y, xy, x^2, y^2


class FrameShading(nn.Module):
    """Per-frame gain and offset: `coef` [T, 3, 7] holds each channel's 6 log-gain
    coefficients and its offset, less their mean over the frames; zero is no change.
    `normalise` maps pixel coordinates to the model's frame coordinates
    (atlas.model.FrameGeometry.normalise: centred, the longer side spanning -0.5 to 0.5)."""

    def __init__(self, num_frames: int, normalise: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.normalise = normalise
        self.coef = nn.Parameter(torch.zeros(num_frames, 3, BASIS_TERMS + 1))

    def basis(self, xy: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates xy [N, 2] -> [N, 6] terms, x and y from -1 to 1 across the longer side."""
        x, y = (2.0 * self.normalise(xy)).unbind(-1)
        return torch.stack([torch.ones_like(x), x, y, x * y, x * x, y * y], dim=-1)

    def gain_offset(self, xy: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain [N, 3], offset [N, 3]) at pixels xy [N, 2] of frames t [N]."""
        c = self.centred().index_select(0, t)  # [N, 3, 7]
        gain = torch.exp((c[..., :BASIS_TERMS] * self.basis(xy)[:, None]).sum(dim=-1))
        return gain, c[..., BASIS_TERMS]

    def forward(self, rgb: torch.Tensor, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return shade(rgb, *self.gain_offset(xy, t))

    def centred(self) -> torch.Tensor:
        """[T, 3, 7] the coefficients in effect: `coef` less its mean over the frames."""
        return self.coef - self.coef.mean(dim=0)

    def prior(self) -> torch.Tensor:
        """Mean square of the coefficients in effect: what holds a frame near no change."""
        return self.centred().square().mean()


def shade(rgb: torch.Tensor, gain: torch.Tensor | None, offset: torch.Tensor | None) -> torch.Tensor:
    """Atlas colours [..., 3] as a frame shows them (unchanged without shading)."""
    return rgb if gain is None or offset is None else rgb * gain + offset


def unshade(rgb: torch.Tensor, gain: torch.Tensor | None, offset: torch.Tensor | None) -> torch.Tensor:
    """Frame colours [..., 3] as the atlas holds them: the inverse of :func:`shade`."""
    return rgb if gain is None or offset is None else (rgb - offset) / gain
