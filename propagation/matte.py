"""Layer weights refined against the frame they composite into (the `guided` matte).

A foreground's fitted opacity comes from a 3-D grid coarser than the pixels (its finest
cells are 1 / model.alpha_finest_frac pixels), so its edge is a ramp a few pixels wide
that need not sit on the object's edge: an edit then paints a rim of the background onto
the object, and of the object's paint onto the background. Each frame's foreground
weights are passed through a guided filter (He, Sun and Tang, 2010) with the source frame
as the guide, which moves the ramp onto the frame's own colour edge, and their contrast is
doubled about 0.5, which narrows the ramp. The fitted weights are left as they are in the
bundle; `atlas edit --matte fitted` composites with them unchanged, and `atlas export`
writes either.
"""
from __future__ import annotations

import cv2
import torch

from atlas.errors import AtlasInputError
from atlas.model import LayeredAtlas

MATTES = ("guided", "fitted")
EPS = 1e-3  # guide variance (colours in 0..1) below which the guided filter smooths instead of following the colour
CONTRAST = 2.0  # slope about 0.5 applied to the filtered weight
RADIUS_CELLS = 2.0  # window radius, in the finest cells of the opacity grid


def check_matte(matte: str) -> None:
    if matte not in MATTES:
        raise AtlasInputError(f"matte must be one of {', '.join(MATTES)}, got {matte!r}")


def matte_radius(model: LayeredAtlas, scale: float = 1.0) -> int:
    """The guided filter's window radius in pixels of frames `scale` times the fitted
    size: two of the opacity grid's finest cells."""
    return max(1, round(RADIUS_CELLS / model.cfg.alpha_finest_frac * scale))


def _planes(image: torch.Tensor) -> list[torch.Tensor]:
    """The channels of image [H, W, C] as contiguous planes [H, W] (float32, CPU)."""
    hwc = image.detach().float().cpu().contiguous().numpy()
    return [torch.from_numpy(c) for c in cv2.split(hwc)] if hwc.shape[2] > 1 else [torch.from_numpy(hwc[..., 0].copy())]


def box_mean(planes: list[torch.Tensor], radius: int) -> list[torch.Tensor]:
    """Mean of each plane [H, W] (float32, CPU) over the (2r+1)^2 window around each
    pixel, the border mirrored (without repeating the edge pixel)."""
    h, w = planes[0].shape
    r = min(radius, h - 1, w - 1)
    if r < 1:
        return planes
    hwc = cv2.merge([q.contiguous().numpy() for q in planes])  # OpenCV filters every channel of an image in one call
    out = cv2.boxFilter(hwc, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT_101)
    return [torch.from_numpy(c) for c in cv2.split(out.reshape(h, w, len(planes)))]


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = EPS) -> torch.Tensor:
    """The K channels of src [H, W, K] filtered with the colour image guide [H, W, 3]: in
    each window a channel's output is a linear function of the guide's colour fitted to
    it, averaged over the windows that cover a pixel; where the guide has an edge, the
    output's edge follows it. The guide's statistics are shared by the channels. The
    arithmetic runs on whole planes: per-channel slices of a channels-last image are
    strided, which at 4K made the filter several times slower."""
    img, p = _planes(guide), _planes(src)
    k = len(p)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    means = box_mean([*img, *(img[i] * img[j] for i, j in pairs), *p, *(p[c] * img[i] for c in range(k) for i in range(3))], radius)
    mean_i, mean_ii, mean_p, mean_ip = means[:3], means[3:9], means[9 : 9 + k], means[9 + k :]
    a00, a01, a02, a11, a12, a22 = (mean_ii[n] - mean_i[i] * mean_i[j] + (eps if i == j else 0.0) for n, (i, j) in enumerate(pairs))
    # the symmetric 3x3 covariance inverted by its cofactors (positive definite: eps > 0)
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
    c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
    inv_det = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02)
    coeffs = []
    for c in range(k):
        cov = [mean_ip[3 * c + i] - mean_p[c] * mean_i[i] for i in range(3)]
        a = [(r0 * cov[0] + r1 * cov[1] + r2 * cov[2]) * inv_det for r0, r1, r2 in ((c00, c01, c02), (c01, c11, c12), (c02, c12, c22))]
        coeffs += [*a, mean_p[c] - a[0] * mean_i[0] - a[1] * mean_i[1] - a[2] * mean_i[2]]
    ab = box_mean(coeffs, radius)
    out = [ab[4 * c] * img[0] + ab[4 * c + 1] * img[1] + ab[4 * c + 2] * img[2] + ab[4 * c + 3] for c in range(k)]
    merged = cv2.merge([o.numpy() for o in out]) if k > 1 else out[0].numpy()[..., None]
    return torch.from_numpy(merged.reshape(*out[0].shape, k)).to(device=src.device, dtype=src.dtype)


def guided_weights(weights: torch.Tensor, frame: torch.Tensor, radius: int) -> torch.Tensor:
    """Layer weights [H, W, layers] (background first) with each foreground's refined
    against `frame` [H, W, 3]; the foregrounds are scaled to sum to at most 1 and the
    background takes the rest, as in the fit's compositing."""
    if weights.shape[-1] < 2:
        return weights
    fg = ((guided_filter(frame, weights[..., 1:], radius) - 0.5) * CONTRAST + 0.5).clamp(0.0, 1.0)
    fg = fg / fg.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.cat([1.0 - fg.sum(-1, keepdim=True), fg], -1).to(weights.dtype)
