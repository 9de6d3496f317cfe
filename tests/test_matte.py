"""The guided matte: the filter against a direct reference, its edges against known ones, and edits with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.errors import AtlasInputError
from editing import edit
from propagation.matte import guided_filter, guided_weights, matte_radius
from propagation.render import overlay_frame


def _reference_guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """The guided filter computed window by window: a linear model of src on the guide's
    colour fitted in every (2r+1)^2 window (border mirrored without repeating the edge),
    each pixel's output the mean of the models of the windows covering it."""
    h, w = src.shape
    gp = np.pad(guide, ((r, r), (r, r), (0, 0)), mode="reflect")
    pp = np.pad(src, r, mode="reflect")
    a = np.zeros((h, w, 3))
    b = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win_i = gp[y : y + 2 * r + 1, x : x + 2 * r + 1].reshape(-1, 3).astype(np.float64)
            win_p = pp[y : y + 2 * r + 1, x : x + 2 * r + 1].reshape(-1).astype(np.float64)
            mi, mp = win_i.mean(0), win_p.mean()
            cov = (win_i - mi).T @ (win_i - mi) / len(win_p) + eps * np.eye(3)
            a[y, x] = np.linalg.solve(cov, (win_i - mi).T @ (win_p - mp) / len(win_p))
            b[y, x] = mp - a[y, x] @ mi
    ap = np.pad(a, ((r, r), (r, r), (0, 0)), mode="reflect")
    bp = np.pad(b, r, mode="reflect")
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            ma = ap[y : y + 2 * r + 1, x : x + 2 * r + 1].reshape(-1, 3).mean(0)
            out[y, x] = ma @ guide[y, x] + bp[y : y + 2 * r + 1, x : x + 2 * r + 1].mean()
    return out


def test_guided_filter_matches_the_window_by_window_reference():
    rng = np.random.default_rng(0)
    guide = rng.uniform(0, 1, (11, 14, 3)).astype(np.float32)
    guide[:, 7:] += 0.5  # an edge, so the windows differ
    src = rng.uniform(0, 1, (11, 14, 2)).astype(np.float32)  # two channels, filtered at once
    for r, eps in ((1, 1e-3), (3, 1e-2)):
        ours = guided_filter(torch.from_numpy(guide), torch.from_numpy(src), r, eps).numpy()
        for k in range(src.shape[-1]):
            ref = _reference_guided_filter(guide, src[..., k], r, eps)
            assert np.abs(ours[..., k] - ref).max() < 2e-4, (r, eps, k, np.abs(ours[..., k] - ref).max())


def _edge_scene(width: int = 48, height: int = 20, edge: float = 20.0, ramp_centre: float = 22.0):
    """A frame whose colour changes at x = edge and a foreground weight that ramps from 0 to
    1 over 6 px centred 2 px off that edge (what a coarse opacity grid fits)."""
    x = torch.arange(width, dtype=torch.float32) + 0.5
    left = torch.tensor([0.8, 0.3, 0.2])
    right = torch.tensor([0.1, 0.2, 0.6])
    frame = torch.where((x < edge)[:, None], left, right).expand(height, width, 3).clone()
    fg = ((x - ramp_centre) / 6.0 + 0.5).clamp(0, 1).expand(height, width)
    truth = (x >= edge).float().expand(height, width)
    return frame, torch.stack([1 - fg, fg], -1), truth


def _crossing(weight_row: torch.Tensor) -> float:
    """x where a rising weight row first reaches 0.5 (continuous pixels, linear between centres)."""
    i = int((weight_row >= 0.5).nonzero()[0])
    lo, hi = float(weight_row[i - 1]), float(weight_row[i])
    return i - 0.5 + (0.5 - lo) / (hi - lo)


def test_guided_weights_move_the_edge_onto_the_colour_edge():
    frame, weights, truth = _edge_scene()
    out = guided_weights(weights, frame, radius=4)
    assert abs(_crossing(out[10, :, 1]) - 20.0) < 0.5  # the fitted ramp crosses 0.5 at x = 22
    assert (out[..., 1] - truth).abs().mean() < 0.5 * (weights[..., 1] - truth).abs().mean()
    assert torch.allclose(out.sum(-1), torch.ones(())) and out.min() >= 0 and out.max() <= 1
    # where the frame has no edge, the filter has nothing to move the ramp onto: it stays put
    flat = guided_weights(weights, torch.full_like(frame, 0.5), radius=4)
    assert abs(_crossing(flat[10, :, 1]) - 22.0) < 0.1


def test_guided_weights_keep_layers_summing_to_one():
    rng = torch.Generator().manual_seed(0)
    frame = torch.rand(16, 20, 3, generator=rng)
    fg = torch.rand(16, 20, 2, generator=rng) * 0.7
    weights = torch.cat([1 - fg.sum(-1, keepdim=True).clamp(max=1), fg], -1)
    out = guided_weights(weights, frame, radius=2)
    assert torch.allclose(out.sum(-1), torch.ones(()), atol=1e-6) and out.min() >= 0 and out.max() <= 1
    only = torch.ones(16, 20, 1)
    assert torch.equal(guided_weights(only, frame, radius=2), only)  # one layer: nothing to cut


def test_edits_with_the_fitted_matte_use_the_fitted_weights(fitted, clip):
    paint = fitted.textures["background"].copy()
    paint[..., :3] = [0.0, 1.0, 0.0]
    edits = {0: paint}
    fitted_out = edit(fitted, atlas={"background": paint}, frames=clip.frames, matte="fitted").frames
    assert torch.equal(fitted_out[3], overlay_frame(clip.frames[3], fitted.frame_maps(3), edits))
    guided_out = edit(fitted, atlas={"background": paint}, frames=clip.frames).frames
    differs = (guided_out - fitted_out).abs().amax(-1) > 0.02
    # the matte only moves the layers' edges: away from the sprite's outline the two agree
    # to within the few thousandths of foreground weight the contrast takes off the background
    near_edge = torch.nn.functional.max_pool2d(clip.masks[:, None], 9, 1, 4)[:, 0] > 0.5
    near_edge &= ~(torch.nn.functional.max_pool2d(-clip.masks[:, None], 9, 1, 4)[:, 0] < -0.5)
    assert differs.any() and not differs[~near_edge].any()
    assert matte_radius(fitted.model) == 4
    with pytest.raises(AtlasInputError, match="matte must be one of guided, fitted"):
        edit(fitted, atlas={"background": paint}, frames=clip.frames, matte="soft")
