"""The guided matte: the filter against a direct reference, its edges against known ones, and edits with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.errors import AtlasInputError
from editing import edit
from propagation.matte import guided_filter, guided_weights, matte_radius
from propagation.render import matted_maps, overlay_frame


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


def _exported_weights(out, names, t):
    from atlas.io import read_exr_channels

    return torch.stack([torch.from_numpy(read_exr_channels(out / "uv" / n / f"{t:05d}.exr")["A"]) for n in names], -1)


def test_export_writes_the_weights_edits_composite_with(fitted, clip, tmp_path):
    """Guided: the weights atlas edit uses, refined against the given source; fitted: as in
    the bundle; no source to read: the fitted weights, a warning, and export.json says so."""
    import json

    from atlas.io import read_image
    from propagation.export import export

    names, t = fitted.layer_names, 3
    guided = export(fitted, tmp_path / "guided", source=clip.frames)
    assert json.loads((guided / "export.json").read_text())["matte"] == "guided"
    expected = matted_maps(fitted, t, clip.frames[t], "guided").weights
    assert torch.allclose(_exported_weights(guided, names, t), expected, atol=1e-6)
    alpha = torch.from_numpy(read_image(guided / "alpha" / f"{t:05d}.png"))[..., 0]
    assert (alpha - (1.0 - expected[..., 0])).abs().max() <= 0.5 / 255 + 1e-6
    plain = export(fitted, tmp_path / "fitted", matte="fitted")
    assert json.loads((plain / "export.json").read_text())["matte"] == "fitted"
    assert torch.allclose(_exported_weights(plain, names, t), fitted.frame_maps(t).weights, atol=1e-6)
    assert not torch.allclose(expected, fitted.frame_maps(t).weights, atol=0.02)
    with pytest.warns(UserWarning, match="source video synthetic unavailable"):  # the fixture's source is not on disk
        fallback = export(fitted, tmp_path / "fallback")
    assert json.loads((fallback / "export.json").read_text())["matte"] == "fitted"
    with pytest.raises(AtlasInputError, match="matte must be one of"):
        export(fitted, tmp_path / "bad", matte="soft")
    with pytest.raises(AtlasInputError, match="the bundle expects"):
        export(fitted, tmp_path / "short", source=clip.frames[:5])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "short").exists()


def test_cli_export_reads_the_source_it_is_given(fitted, clip, tmp_path):
    """--source: a sequence read at the maps' size; one shorter than the fit fails with exit
    2 and leaves nothing behind."""
    import json

    from atlas.cli import main
    from atlas.io import read_video, write_video

    write_video(clip.frames, tmp_path / "plate")
    out = tmp_path / "exp"
    assert main(["export", str(fitted.path), "-o", str(out), "--source", str(tmp_path / "plate"), "--quiet"]) == 0
    assert json.loads((out / "export.json").read_text())["matte"] == "guided"
    plate = read_video(tmp_path / "plate").frames.float() / 255.0
    expected = matted_maps(fitted, 5, plate[5], "guided").weights
    assert torch.allclose(_exported_weights(out, fitted.layer_names, 5), expected, atol=1e-6)
    write_video(clip.frames[:5], tmp_path / "short")
    bad = tmp_path / "bad"
    assert main(["export", str(fitted.path), "-o", str(bad), "--source", str(tmp_path / "short"), "--quiet"]) == 2
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_a_one_layer_export_reads_no_source(tiny_video, tmp_path):
    """With a single layer there is no edge to cut: the export neither reads nor asks for the source."""
    import json
    import warnings

    import atlas
    from propagation.export import export

    one = atlas.fit(tiny_video, tmp_path / "one.atlas", "fast", ["model.num_foregrounds=0", "train.checkpoint_every=0"], iters=5, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the source ("tiny") is not on disk: reading it would warn
        out = export(one, tmp_path / "exp")
    assert json.loads((out / "export.json").read_text())["matte"] == "fitted"
