"""Edits through the fitted synthetic clip, against the ground-truth edited video."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.errors import AtlasInputError
from atlas.evaluate import psnr
from editing import edit
from propagation.render import overlay_frame
from propagation.sample import sample


def _true_edit(clip):
    """A bright patch painted on the true background texture, away from the sprite in frame 0."""
    bg = clip.background.copy()
    ys, xs = np.mgrid[0 : bg.shape[0], 0 : bg.shape[1]]
    # a disc at background texel (20, 20): seen in frame 0 at (20, 20) - camera[0]
    patch = (xs + 0.5 - 20) ** 2 + (ys + 0.5 - 22) ** 2 <= 9**2
    bg[patch] = 0.5 * bg[patch] + 0.5 * np.array([1.0, 0.1, 0.1], np.float32)
    return clip.render(background=bg)


def test_keyframe_edit_reproduces_true_edited_video(fitted, clip):
    truth = _true_edit(clip)
    region = (truth - clip.frames).abs().amax(-1) > 1e-4
    assert region[0].sum() > 100 and region[-1].sum() > 50  # the patch is visible throughout
    out = edit(fitted, keyframes={0: truth[0]}, frames=clip.frames).frames
    assert out.shape == clip.frames.shape
    scores = [psnr(out[t][region[t]], truth[t][region[t]]) for t in range(1, clip.frames.shape[0])]
    assert min(scores) > 24.0 and np.mean(scores) > 28.0, scores
    # the keyframe's own frame shows the painted pixels exactly, not resampled through the atlas
    painted = (truth[0] - clip.frames[0]).abs().amax(-1) > 3.0 / 255.0
    assert painted.sum() > 100 and torch.equal(out[0][painted], truth[0][painted])


def test_keyframes_are_laid_over_their_own_frames_by_their_masks():
    from propagation.render import pin_keyframes

    frames = [torch.full((4, 5, 3), float(t)) for t in range(3)]
    image, mask = torch.full((4, 5, 3), 10.0), torch.zeros(4, 5)
    mask[1, 2], mask[3, 4] = 1.0, 0.25
    out = list(pin_keyframes(iter(frames), {1: (image, mask)}))
    assert torch.equal(out[0], frames[0]) and torch.equal(out[2], frames[2])
    assert out[1][1, 2].tolist() == [10.0] * 3 and out[1][3, 4].tolist() == [1.0 + 0.25 * 9.0] * 3
    assert out[1][0, 0].tolist() == [1.0] * 3


def test_paint_on_an_object_the_keyframe_mislaid_lands_on_the_object(fitted, clip, monkeypatch):
    """As if the fit had put the sprite into the background in the keyframe alone (opacity 0
    in frame 0): stripes painted on it there still go onto the foreground's atlas (frames
    1..4 show the points of the foreground's mapping on the sprite), so they move with the
    sprite instead of staying behind on the background."""
    from propagation.splat import keyframe_weights

    model = fitted.model
    alpha = model.alpha
    monkeypatch.setattr(model, "alpha", lambda xy, t: torch.where((t == 0)[:, None], torch.zeros(()), alpha(xy, t)))
    monkeypatch.setattr(fitted, "_maps", {})  # frame maps evaluated with the mislaid opacity
    maps = fitted.frame_maps(0)
    assert maps.weights[..., 1].max() == 0
    every = torch.ones(maps.weights.shape[:2])
    weights = keyframe_weights(model, maps, 0, every)
    inner = torch.nn.functional.max_pool2d(-(clip.masks[:1, None]), 5, 1, 2)[0, 0] < -0.5
    outer = torch.nn.functional.max_pool2d(clip.masks[:1, None], 5, 1, 2)[0, 0] < 0.5
    assert (weights[..., 1][inner] > 0.5).float().mean() > 0.95
    assert (weights[..., 1][outer] < 0.5).float().mean() > 0.99
    assert torch.allclose(weights.sum(-1), torch.ones(())) and torch.equal(keyframe_weights(model, maps, 0, 0 * every), maps.weights)
    dense = keyframe_weights(model, maps, 0, every, coarse=1)  # the coarse-to-fine check finds what the dense one does
    assert ((dense - weights).abs().amax(-1) > 1e-6).float().mean() < 0.01

    sprite = clip.sprite.copy()
    sprite[(np.arange(sprite.shape[0]) // 3) % 2 == 1] = [0.1, 1.0, 0.2]  # green stripes
    truth = clip.render(sprite=sprite)
    region = (truth - clip.frames).abs().amax(-1) > 1e-3
    out = edit(fitted, keyframes={0: truth[0]}, frames=clip.frames).frames
    on = [psnr(out[t][region[t]], truth[t][region[t]]) for t in range(1, clip.frames.shape[0])]
    # (the same edit on the sprite scores 17-23 dB through this short fit's own opacity, and
    # about 8 dB when the keyframe's mislaid weights are splatted with)
    assert np.mean(on) > 18.0 and min(on) > 15.0, on


def test_a_keyframe_seen_from_farther_than_its_atlas_fills_it_without_holes():
    """A keyframe whose pixels land 3 texels apart (its layer's closest view is 3x nearer):
    splatted with each pixel's footprint, every texel between its pixels is edited and a
    linear ramp comes back as the ramp; the bilinear weights alone leave texels unedited."""
    from atlas.evaluate import FrameMaps
    from propagation.splat import SplatAccumulator, footprint, splat_layer

    h, w, k = 12, 16, 3
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    uv = torch.stack([(k * xs + 1.5) / (k * w), (k * ys + 1.5) / (k * h)], -1)  # pixel (x, y) on texel (3x + 1, 3y + 1)
    assert torch.allclose(footprint(uv, k * w, k * h), torch.full((h, w, 2), float(k), dtype=torch.float64))
    maps = FrameMaps(None, uv[:, :, None].float(), torch.ones(h, w, 1))
    ramp = torch.stack([xs / w, ys / h, torch.full_like(xs, 0.5)], -1).float()
    acc = SplatAccumulator(k * w, k * h)
    splat_layer(acc, maps, 0, ramp, torch.ones(h, w))
    rgba = acc.rgba()
    inner = (slice(1, k * (h - 1) + 2), slice(1, k * (w - 1) + 2))  # texels from the first pixel's to the last's
    assert (rgba[inner][..., 3] == 1).all()
    tx, ty = np.meshgrid(np.arange(k * w), np.arange(k * h))
    assert np.abs(rgba[inner][..., 0] - ((tx - 1) / k / w)[inner]).max() < 1e-5
    assert np.abs(rgba[inner][..., 1] - ((ty - 1) / k / h)[inner]).max() < 1e-5
    bilinear = SplatAccumulator(k * w, k * h)
    bilinear.add(uv.reshape(-1, 2), torch.ones(h * w), torch.ones(h * w), ramp.reshape(-1, 3))
    assert (bilinear.rgba()[inner][..., 3] == 0).mean() > 0.5
    # the same pixels turned by 45 degrees on a square atlas: no texel inside them is left out
    side = 80
    c, r = (xs - w / 2) * k, (ys - h / 2) * k
    turned = torch.stack([(c - r) / 2**0.5 + side / 2, (c + r) / 2**0.5 + side / 2], -1) / side
    acc = SplatAccumulator(side, side)
    splat_layer(acc, FrameMaps(None, turned[:, :, None].float(), torch.ones(h, w, 1)), 0, ramp, torch.ones(h, w))
    tx, ty = np.meshgrid(np.arange(side) + 0.5 - side / 2, np.arange(side) + 0.5 - side / 2)
    back_x, back_y = (tx + ty) / 2**0.5, (ty - tx) / 2**0.5  # texel centres in the pixels' frame, times k
    inside = (np.abs(back_x) < k * (w / 2 - 1.5)) & (np.abs(back_y) < k * (h / 2 - 1.5))
    assert inside.sum() > 500 and (acc.rgba()[..., 3][inside] == 1).all()


def test_background_edit_goes_behind_the_foreground(fitted, clip):
    bg = fitted.textures["background"]
    paint = bg.copy()
    paint[..., :3] = [0.0, 1.0, 0.0]  # repaint the whole background atlas
    out = edit(fitted, atlas={"background": paint}, frames=clip.frames).frames
    sprite = clip.masks > 0.5
    inner = torch.nn.functional.max_pool2d(-(clip.masks[:, None]), 5, 1, 2)[:, 0] < -0.5  # sprite minus a border
    green = (out[..., 1] > 0.8) & (out[..., 0] < 0.2)
    assert green[~sprite].float().mean() > 0.9
    assert green[inner].float().mean() < 0.05  # the sprite still covers it


def test_overlay_leaves_untouched_pixels_bit_identical(fitted, clip):
    paint = fitted.textures["background"].copy()
    paint[10:14, 10:14, :3] = 1.0 - paint[10:14, 10:14, :3]
    out = edit(fitted, atlas={"background": paint}, frames=clip.frames).frames
    changed = (out != clip.frames).any(-1)
    assert 0 < changed.sum() < 0.05 * changed.numel()
    maps = fitted.frame_maps(0)
    empty = {0: np.zeros_like(fitted.textures["background"])}
    assert torch.equal(overlay_frame(clip.frames[0], maps, empty), clip.frames[0])


def test_replace_mode_rerenders_from_textures(fitted, clip):
    same = edit(fitted, atlas={"background": fitted.textures["background"]}, mode="replace", frames=clip.frames).frames
    # no edit + detail residual = the source
    assert torch.allclose(same, clip.frames, atol=2e-3)


@pytest.mark.parametrize("mode", ["overlay", "replace"])
def test_streamed_frames_equal_the_whole_video(fitted, clip, mode):
    paint = fitted.textures["background"].copy()
    paint[4:12, 4:12] = [1.0, 0.0, 0.0, 1.0]
    result = edit(fitted, atlas={"background": paint}, mode=mode, frames=clip.frames)
    streamed = list(result.iter_frames())
    assert len(streamed) == clip.frames.shape[0]
    assert torch.equal(torch.stack(streamed), result.frames)
    assert not torch.equal(result.frames, clip.frames)


def test_sample_convention():
    tex = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1)
    centres = torch.tensor([[0.125, 1 / 6], [0.875, 5 / 6]])
    assert torch.allclose(sample(tex, centres)[:, 0], torch.tensor([0.0, 11.0]), atol=1e-5)
    assert sample(tex, torch.tensor([[1.5, 0.5]]), outside="zeros")[0, 0] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (lambda b: {"atlas": {"sky": b.textures["background"]}}, "no layer 'sky'"),
        (lambda b: {"atlas": {"background": np.zeros((5, 5, 4), np.float32)}}, "edit the exported"),
        (lambda b: {"keyframes": {99: np.zeros((60, 80, 3), np.float32)}}, "out of range"),
        (lambda b: {"keyframes": {0: np.zeros((10, 10, 3), np.float32)}}, "fitted frames are 80x60"),
        (lambda b: {"keyframes": {0: np.zeros((60, 80, 3), np.float32)}, "keyframe_masks": {1: np.ones((60, 80))}}, "without a --keyframe"),
        (lambda b: {"prompt": "origami", "method": "warp"}, "needs --method"),
        (lambda b: {"prompt": "origami", "method": "videdit", "layer": "sky"}, "no layer .sky."),
        (lambda b: {"atlas": {"background": b.textures["background"]}, "strength": 0.5}, "only apply to --prompt"),
        (lambda b: {}, "exactly one kind"),
    ],
)
def test_bad_edits(fitted, clip, kwargs, match):
    with pytest.raises(AtlasInputError, match=match):
        edit(fitted, frames=clip.frames, **kwargs(fitted))


def test_export_stmap_round_trip(fitted, tmp_path):
    """Applying each layer's STMap to its atlas (Nuke's convention) and compositing with
    the exported layer weights gives the same frame as re-rendering the atlases."""
    import json

    from atlas.io import read_exr_channels
    from propagation.export import export
    from propagation.render import replace_frame

    out = export(fitted, tmp_path / "exp", matte="fitted")
    info = json.loads((out / "export.json").read_text())
    assert info["layers"] == fitted.layer_names and info["frames"] == fitted.num_frames
    assert len(list((out / "stmap" / "background").glob("*.exr"))) == fitted.num_frames
    assert set(info["quality"]) == set(fitted.layer_names)
    t = 3
    frame = torch.zeros(60, 80, 3)
    for name in fitted.layer_names:
        st = read_exr_channels(out / "stmap" / name / f"{t:05d}.exr")["RGBA"]
        # Nuke: R = s, G = t from the bottom; sample the atlas there
        uv = torch.from_numpy(np.stack([st[..., 0], 1.0 - st[..., 1]], -1))
        frame += torch.from_numpy(st[..., 3:4]) * sample(fitted.textures[name], uv, outside="border")[..., :3]
        uvexr = read_exr_channels(out / "uv" / name / f"{t:05d}.exr")
        assert set(uvexr) == {"u", "v", "A"} and uvexr["u"].shape == (60, 80)
        assert np.allclose(uvexr["v"], 1.0 - st[..., 1], atol=1e-6)
    shading = read_exr_channels(out / "shading" / f"{t:05d}.exr")  # frame = gain * composite + offset
    frame = frame * torch.from_numpy(shading["RGB"]) + torch.from_numpy(shading["offset"])
    expected = replace_frame(fitted.frame_maps(t), [fitted.textures[n] for n in fitted.layer_names])
    assert torch.allclose(frame.clamp(0, 1), expected, atol=1e-4)


def test_maps_without_colour_hold_the_same_mapping(fitted):
    """An export evaluates no reconstruction: the mapping and weights are those of a full evaluation."""
    from atlas.evaluate import evaluate_frame

    full, bare = evaluate_frame(fitted.model, 2), evaluate_frame(fitted.model, 2, colour=False)
    assert bare.rgb is None and full.rgb is not None
    assert torch.equal(bare.uv, full.uv) and torch.equal(bare.weights, full.weights)


def test_export_of_a_reduced_fit_is_at_the_source_resolution(clip, tmp_path):
    """A fit made at half the source's size exports maps at the source's: the mapping is
    evaluated at the source's pixel centres, so the four that split a fitted pixel
    average to its value (a half-pixel slip of the grid would move them a quarter texel)."""
    import json

    import atlas
    from atlas.cli import main
    from atlas.io import Video, read_exr_channels
    from propagation.export import export

    video = Video(clip.frames, clip.fps, "synthetic", (0, clip.frames.shape[0]))
    half = atlas.fit(video, tmp_path / "half.atlas", "fast", ["train.checkpoint_every=0"], size=(40, 30), iters=120, quiet=True)
    assert half.size == (40, 30) and half.source_size == (80, 60)
    out = export(half, tmp_path / "exp")
    info = json.loads((out / "export.json").read_text())
    assert info["size"] == [80, 60] and info["fitted_size"] == [40, 30] and info["source_size"] == [80, 60]
    assert main(["export", str(half.path), "-o", str(tmp_path / "small"), "--fitted-size", "--quiet"]) == 0
    assert json.loads((tmp_path / "small" / "export.json").read_text())["size"] == [40, 30]
    t = 2
    for name in half.layer_names:
        src = read_exr_channels(out / "uv" / name / f"{t:05d}.exr")
        small = read_exr_channels(tmp_path / "small" / "uv" / name / f"{t:05d}.exr")
        assert src["u"].shape == (60, 80) and small["u"].shape == (30, 40)
        assert read_exr_channels(out / "stmap" / name / f"{t:05d}.exr")["RGBA"].shape == (60, 80, 4)
        atlas_h, atlas_w = half.textures[name].shape[:2]
        for ch, texels in (("u", atlas_w), ("v", atlas_h)):
            quad = src[ch].reshape(30, 2, 40, 2).mean(axis=(1, 3))
            assert np.median(np.abs(quad - small[ch])) * texels < 0.05
    assert len(list((out / "alpha").glob("*.png"))) == half.num_frames
    # the guided matte at the source's size: its window covers as many opacity cells as at the fitted size
    from propagation.matte import guided_weights, matte_radius

    guided = export(half, tmp_path / "guided", source=clip.frames)
    radius = matte_radius(half.model, 2.0)
    assert radius == 2 * matte_radius(half.model)
    expected = guided_weights(half.frame_maps(t, (80, 60), colour=False).weights, clip.frames[t], radius)
    for i, name in enumerate(half.layer_names):
        assert np.allclose(read_exr_channels(guided / "uv" / name / f"{t:05d}.exr")["A"], expected[..., i].numpy(), atol=1e-6)


def test_cli_edit_writes_video_and_atlases(fitted, tmp_path, capsys):
    from atlas.cli import main
    from atlas.io import read_image, write_png

    paint = fitted.textures["background"].copy()
    paint[5:15, 5:25, :3] = [1.0, 0.0, 1.0]
    write_png(tmp_path / "bg.png", paint)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "edited"
    assert main(["edit", str(fitted.path), "-o", str(out), "--atlas", f"background={tmp_path / 'bg.png'}", "--quiet"]) == 0
    assert len(list(out.glob("*.png"))) == fitted.num_frames
    assert read_image(tmp_path / "edited_atlas" / "background_edit.png").shape[2] == 4
    as_fitted = tmp_path / "as_fitted"
    assert main(["edit", str(fitted.path), "-o", str(as_fitted), "--atlas", f"background={tmp_path / 'bg.png'}", "--matte", "fitted",
                 "--quiet"]) == 0
    frames = [(read_image(out / p.name), read_image(p)) for p in sorted(as_fitted.glob("*.png"))]
    assert len(frames) == fitted.num_frames and any(not np.array_equal(a, b) for a, b in frames)  # --matte reaches the render
    for argv, match in [
        (["--atlas", "background"], "KEY=PATH"),
        (["--keyframe", "x=frame.png"], "not a frame index"),
        (["--atlas", f"background={tmp_path / 'missing.png'}"], "not found"),
        (["--keyframe", f"0={tmp_path / 'bg.png'}"], "fitted frames are 80x60"),
        (["--keyframe", f"0={tmp_path / 'corrupt.png'}"], "cannot read image"),
        (["--keyframe", f"9={tmp_path / 'bg.png'}"], "out of range"),
        (["--atlas", f"sky={tmp_path / 'bg.png'}"], "no layer 'sky'"),
    ]:
        assert main(["edit", str(fitted.path), "-o", str(tmp_path / "bad.mp4"), *argv]) == 2
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["edit", str(fitted.path), "-o", str(tmp_path / "bad.mp4"), "--atlas", f"background={tmp_path / 'bg.png'}", "--matte", "soft"])
    assert exc.value.code == 2 and "invalid choice: 'soft'" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


def test_keyframe_at_source_resolution_is_resized(fitted, clip):
    """A clip fitted with --size can take keyframes painted on the full-resolution frame."""
    import cv2

    truth = _true_edit(clip)
    big = cv2.resize(truth[0].numpy(), (160, 120), interpolation=cv2.INTER_LINEAR)
    small = edit(fitted, keyframes={0: truth[0]}, frames=clip.frames).frames
    large = edit(fitted, keyframes={0: big}, frames=clip.frames).frames
    region = (truth - clip.frames).abs().amax(-1) > 1e-4
    assert psnr(large[region], small[region]) > 30.0
