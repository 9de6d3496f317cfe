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


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of x [H, W, C] (float32, CPU) over the (2r+1)^2 window around each pixel, the
    border mirrored (without repeating the edge pixel)."""
    r = min(radius, x.shape[0] - 1, x.shape[1] - 1)
    if r < 1:
        return x
    out = cv2.boxFilter(x.contiguous().numpy(), -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(out).reshape(x.shape)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = EPS) -> torch.Tensor:
    """The K channels of src [H, W, K] filtered with the colour image guide [H, W, 3]: in
    each window a channel's output is a linear function of the guide's colour fitted to
    it, averaged over the windows that cover a pixel; where the guide has an edge, the
    output's edge follows it. The guide's statistics are shared by the channels."""
    img = guide.detach().float().cpu()
    p = src.detach().float().cpu()
    k = p.shape[-1]
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = torch.stack([img[..., i] * img[..., j] for i, j in pairs], -1)
    img_p = (img[..., None, :] * p[..., None]).flatten(-2)  # [H, W, K * 3]
    means = box_mean(torch.cat([img, products, p, img_p], -1), radius)  # one pass for every window mean
    mean_i, mean_ii, mean_p = means[..., :3], means[..., 3:9], means[..., 9 : 9 + k]
    cov_ip = means[..., 9 + k :].unflatten(-1, (k, 3)) - mean_p[..., None] * mean_i[..., None, :]  # [H, W, K, 3]
    var = mean_ii - torch.stack([mean_i[..., i] * mean_i[..., j] for i, j in pairs], -1)
    a00, a01, a02, a11, a12, a22 = (var + eps * torch.tensor([1.0, 0, 0, 1, 0, 1])).unbind(-1)
    # the symmetric 3x3 covariance inverted by its cofactors (positive definite: eps > 0)
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
    c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    inv = torch.stack([torch.stack([c00, c01, c02], -1), torch.stack([c01, c11, c12], -1), torch.stack([c02, c12, c22], -1)], -2)
    a = torch.einsum("hwij,hwkj->hwki", inv / det[..., None, None], cov_ip)  # [H, W, K, 3]
    b = mean_p - (a * mean_i[..., None, :]).sum(-1)  # [H, W, K]
    ab = box_mean(torch.cat([a.flatten(-2), b], -1), radius)
    out = (ab[..., : 3 * k].unflatten(-1, (k, 3)) * img[..., None, :]).sum(-1) + ab[..., 3 * k :]
    return out.to(device=src.device, dtype=src.dtype)


def guided_weights(weights: torch.Tensor, frame: torch.Tensor, radius: int) -> torch.Tensor:
    """Layer weights [H, W, layers] (background first) with each foreground's refined
    against `frame` [H, W, 3]; the foregrounds are scaled to sum to at most 1 and the
    background takes the rest, as in the fit's compositing."""
    if weights.shape[-1] < 2:
        return weights
    fg = ((guided_filter(frame, weights[..., 1:], radius) - 0.5) * CONTRAST + 0.5).clamp(0.0, 1.0)
    fg = fg / fg.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.cat([1.0 - fg.sum(-1, keepdim=True), fg], -1).to(weights.dtype)
