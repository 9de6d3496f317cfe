"""Frames -> atlas: send edited keyframe pixels into each layer's atlas.

Each edited pixel p of a keyframe lands at uv_l(p) on every layer l it belongs to, with
weight w_l(p) (its compositing weight) times a tent as wide as the pixel's footprint on
the atlas (footprint: at least one texel, where it is the bilinear weight of the 4 nearest
texels). An atlas is as dense as the closest view of its layer, so a keyframe that sees
the layer from farther away spans several texels a pixel: bilinear weights would leave
holes and blocks between its pixels, tents as wide as the spacing interpolate them
linearly. Per texel we keep
    C = sum(b * w * m * e) / sum(b * w * m)     the edited colour
    A = sum(b * w * m)     / sum(b * w)         the share of its observations that changed
where m in [0, 1] is the keyframe's edit mask and e the edited colour un-shaded (the
keyframe's exposure and vignetting taken out: atlas.shading), as the atlas holds colours.
Several keyframes are merged by pooling these sums: where keyframes disagree about a
texel, the result is their weight-averaged colour (no keyframe overrides another), and A
falls where a keyframe saw the texel unedited.

A keyframe's own layer weights can be wrong where the fit mislaid part of an object in
that one frame (a neck the motion bootstrap missed there): its paint would then land on
the background behind and be missing from the object everywhere else. So before
splatting, each edited pixel that a foreground layer barely covers is followed along that
layer's mapping into the nearest frames; where the layer covers it there, that weight is
taken instead (keyframe_weights, atlas.track.checked_weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from atlas.evaluate import FrameMaps, pixel_grid
from atlas.model import LayeredAtlas
from atlas.track import checked_weights

COARSE = 4
MAX_FOOTPRINT = 8.0  # texels: the widest a keyframe pixel spreads (a jump in the mapping is not a footprint)


@dataclass
class SplatAccumulator:
    """Sums for one layer's atlas of size (w, h)."""

    width: int
    height: int
    colour: torch.Tensor = field(init=False)  # [h*w, 3] sum(b w m e)
    edited: torch.Tensor = field(init=False)  # [h*w]    sum(b w m)
    seen: torch.Tensor = field(init=False)  # [h*w]    sum(b w)

    def __post_init__(self) -> None:
        n = self.width * self.height
        self.colour = torch.zeros(n, 3, dtype=torch.float64)
        self.edited = torch.zeros(n, dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.float64)

    def add(self, uv: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor,
            reach: torch.Tensor | None = None) -> None:
        """uv [N, 2], weight [N], mask [N], colour [N, 3]; reach [N, 2]: each tent's half
        width along the atlas's x and y in texels (clamped to at least 1; default 1: bilinear)."""
        px = uv.double() * torch.tensor([self.width, self.height], dtype=torch.float64) - 0.5
        reach = torch.ones_like(px) if reach is None else reach.double().clamp_min(1.0)
        base = px.floor().long()
        span = int(torch.ceil(reach.max()).item()) if len(px) else 1
        offsets = range(1 - span, span + 1)
        for dx in offsets:
            for dy in offsets:
                # texel (base + d) is at least d - 1 (d > 0) or -d (d <= 0) texels away
                rows = ((reach[:, 0] > max(dx - 1, -dx)) & (reach[:, 1] > max(dy - 1, -dy))).nonzero().squeeze(1)
                x, y = base[rows, 0] + dx, base[rows, 1] + dy
                b = ((1 - (x - px[rows, 0]).abs() / reach[rows, 0]).clamp_min(0)
                     * (1 - (y - px[rows, 1]).abs() / reach[rows, 1]).clamp_min(0))
                ok = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height) & (b > 0)
                rows, idx = rows[ok], (y * self.width + x)[ok]
                bw = b[ok] * weight.double()[rows]
                bwm = bw * mask.double()[rows]
                self.seen.index_add_(0, idx, bw)
                self.edited.index_add_(0, idx, bwm)
                self.colour.index_add_(0, idx, bwm[:, None] * colour.double()[rows])

    def rgba(self) -> np.ndarray:
        """[h, w, 4] float32 RGBA edit."""
        rgb = self.colour / self.edited.clamp_min(1e-12)[:, None]
        alpha = self.edited / self.seen.clamp_min(1e-12)
        out = torch.cat([rgb.clamp(0, 1), alpha.clamp(0, 1)[:, None]], dim=1)
        return out.reshape(self.height, self.width, 4).float().numpy()


def footprint(uv: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H, W, 2] texels of a (width x height) atlas a frame's pixels span along its x and y,
    from their atlas coordinates uv [H, W, 2]: the length of each texel coordinate's
    gradient over the frame's pixels (the spacing of neighbouring pixels along that atlas
    axis, however the atlas is turned). Each derivative is the smaller of its two one-sided
    differences, so a jump in the mapping (an occlusion edge, the end of a layer) is not
    taken for a footprint; 1 to MAX_FOOTPRINT."""
    texels = uv.double() * torch.tensor([width, height], dtype=torch.float64)

    def change(dim: int) -> torch.Tensor:  # [H, W, 2] |d texel / d pixel| along one frame axis
        if texels.shape[dim] < 2:
            return torch.zeros_like(texels)
        d = texels.diff(dim=dim).abs()
        return torch.minimum(torch.cat([d, d.narrow(dim, -1, 1)], dim), torch.cat([d.narrow(dim, 0, 1), d], dim))

    return torch.hypot(change(1), change(0)).clamp(1.0, MAX_FOOTPRINT)


def keyframe_weights(model: LayeredAtlas, maps: FrameMaps, t: int, mask: torch.Tensor, coarse: int = COARSE) -> torch.Tensor:
    """Layer weights [H, W, layers] of keyframe t (maps) for splatting: at the pixels of
    `mask` [H, W], checked against the nearby frames (atlas.track.checked_weights). The
    check runs on every `coarse`-th pixel in x and y first, then on the pixels within
    `coarse` of those whose weights it changed (a whole-frame edit of a large plate would
    otherwise solve for every pixel)."""
    h, w = mask.shape
    weights = maps.weights.reshape(h * w, -1).clone()
    pixels = pixel_grid(h, w) + 0.5
    edited = mask > 0
    todo = edited
    if coarse > 1:
        grid = torch.zeros(h, w, dtype=torch.bool)
        grid[::coarse, ::coarse] = True
        changed = _check(model, weights, pixels, t, edited & grid)
        near = F.max_pool2d(changed.float()[None, None], 2 * coarse + 1, 1, coarse)[0, 0] > 0
        todo = edited & near & ~grid
    _check(model, weights, pixels, t, todo)
    return weights.reshape(maps.weights.shape)


def _check(model: LayeredAtlas, weights: torch.Tensor, pixels: torch.Tensor, t: int, select: torch.Tensor) -> torch.Tensor:
    """Check the weights [H*W, layers] of the pixels `select` [H, W] in place; [H, W] where they changed."""
    rows = select.reshape(-1).nonzero().squeeze(1)
    before = weights[rows]
    weights[rows] = checked_weights(model, pixels[rows], t, before)
    changed = torch.zeros(len(weights), dtype=torch.bool)
    changed[rows] = (weights[rows] != before).any(dim=1)
    return changed.reshape(select.shape)


def splat_layer(acc: SplatAccumulator, maps: FrameMaps, layer: int, edited: torch.Tensor, mask: torch.Tensor,
                min_weight: float = 0.05, weights: torch.Tensor | None = None) -> None:
    """Add one keyframe ([H, W, 3] edited image, [H, W] mask) to one layer's sums, from the
    pixels whose weight on that layer (`weights` [H, W, layers], default the fitted ones)
    exceeds `min_weight`."""
    w = (maps.weights if weights is None else weights)[..., layer].reshape(-1)
    keep = w > min_weight
    colour = maps.unshade(edited).reshape(-1, 3)[keep]
    uv = maps.uv[..., layer, :]
    reach = footprint(uv, acc.width, acc.height).reshape(-1, 2)[keep]
    acc.add(uv.reshape(-1, 2)[keep], w[keep], mask.reshape(-1)[keep], colour, reach)


def splat_frame(acc: list[SplatAccumulator], maps: FrameMaps, edited: torch.Tensor, mask: torch.Tensor, min_weight: float = 0.05,
                weights: torch.Tensor | None = None) -> None:
    """Add one keyframe to every layer's sums (see splat_layer)."""
    for layer, a in enumerate(acc):
        splat_layer(a, maps, layer, edited, mask, min_weight, weights)


def change_mask(edited: torch.Tensor, source: torch.Tensor, threshold: float = 3.0 / 255.0) -> torch.Tensor:
    """[H, W] 1 where the edited keyframe differs from the source by more than `threshold`."""
    return ((edited - source).abs().amax(dim=-1) > threshold).float()
