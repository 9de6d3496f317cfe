"""Per-frame shading (atlas.shading): a clip whose exposure ramps and whose lens vignettes,
fitted and edited against its ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import atlas
from atlas.evaluate import psnr
from atlas.io import Video, read_exr_channels
from atlas.shading import FrameShading, shade, unshade
from atlas.synthetic import make_clip
from editing import edit
from propagation.export import export

EXPOSURE = np.linspace(0.6, 1.0, 8)  # per frame


def _vignette(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    r2 = ((xs + 0.5 - w / 2) ** 2 + (ys + 0.5 - h / 2) ** 2) / (w / 2) ** 2
    return 1.0 - 0.25 * r2


def _lit(frames: torch.Tensor) -> torch.Tensor:
    """Frames [T, H, W, 3] as the camera of this test sees them."""
    vig = torch.from_numpy(_vignette(*frames.shape[1:3])).float()
    return frames * torch.from_numpy(EXPOSURE).float()[:, None, None, None] * vig[None, :, :, None]


@pytest.fixture(scope="module")
def lit():
    clip = make_clip(num_frames=8, width=80, height=60, seed=0)
    return clip, _lit(clip.frames)


@pytest.fixture(scope="module")
def lit_fit(lit, tmp_path_factory):
    clip, frames = lit
    out = tmp_path_factory.mktemp("shading") / "lit.atlas"
    video = Video(frames, clip.fps, "lit", (0, frames.shape[0]))
    return atlas.fit(video, out, "fast", ["train.checkpoint_every=0"], iters=350, quiet=True, seed=0)


def test_no_shading_is_the_identity():
    s = FrameShading(3, lambda xy: xy / 10.0)
    rgb, xy, t = torch.rand(5, 3), torch.rand(5, 2) * 10, torch.tensor([0, 1, 2, 1, 0])
    assert torch.equal(s(rgb, xy, t), rgb)
    with torch.no_grad():
        s.coef.normal_(0.0, 0.3)
    gain, offset = s.gain_offset(xy, t)
    assert torch.allclose(unshade(shade(rgb, gain, offset), gain, offset), rgb, atol=1e-6)


def test_fit_recovers_the_exposure_ramp(lit_fit, lit, tmp_path):
    centre = []
    for t in range(lit_fit.num_frames):
        gain = lit_fit.frame_maps(t).gain.mean(-1)
        h, w = gain.shape
        centre.append(float(gain[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean()))
    # the atlas and the gains share one overall scale; the ramp between frames is the camera's
    ramp = np.array(centre) / centre[-1]
    assert np.abs(ramp - EXPOSURE / EXPOSURE[-1]).max() < 0.1 and (np.diff(ramp) > 0).all(), ramp
    # an atlas alone cannot follow the exposure: without shading the same fit reconstructs worse
    clip, frames = lit
    video = Video(frames, clip.fps, "lit", (0, frames.shape[0]))
    flat = atlas.fit(video, tmp_path / "flat", "fast", ["train.checkpoint_every=0", "model.shading=none"], iters=350, quiet=True, seed=0)
    shaded, unshaded = lit_fit.meta.metrics["psnr_mean"], flat.meta.metrics["psnr_mean"]
    assert shaded > 28.0 and shaded > unshaded + 2.0, (shaded, unshaded)


def test_keyframe_edit_takes_each_frames_exposure(lit_fit, lit):
    """A patch painted on the darkest frame shows in every other frame as that frame lit it."""
    clip, frames = lit
    bg = clip.background.copy()
    ys, xs = np.mgrid[0 : bg.shape[0], 0 : bg.shape[1]]
    patch = (xs + 0.5 - 20) ** 2 + (ys + 0.5 - 22) ** 2 <= 9**2
    bg[patch] = 0.5 * bg[patch] + 0.5 * np.array([1.0, 0.1, 0.1], np.float32)
    truth = _lit(clip.render(background=bg))
    region = (truth - frames).abs().amax(-1) > 1e-4
    out = edit(lit_fit, keyframes={0: truth[0]}, frames=frames).frames
    scores = [psnr(out[t][region[t]], truth[t][region[t]]) for t in range(1, frames.shape[0])]
    assert min(scores) > 24.0 and np.mean(scores) > 28.0, scores


def test_atlas_edit_is_lit_like_its_frame(fitted, clip):
    """Shading set by hand (frame 1 darker and lifted, the others a little brighter, as the
    coefficients are centred over the shot): an atlas edit lands at gain * colour + offset."""
    import copy

    from atlas.bundle import AtlasBundle

    model = copy.deepcopy(fitted.model)
    T = fitted.num_frames
    with torch.no_grad():
        model.shading.coef.zero_()
        model.shading.coef[1, :, 0] = float(np.log(0.5))
        model.shading.coef[1, :, -1] = 0.1
    bundle = AtlasBundle(model, fitted.meta, fitted.textures)
    paint = bundle.textures["background"].copy()
    paint[..., :3] = [0.8, 0.2, 0.2]
    out = edit(bundle, atlas={"background": paint}, frames=clip.frames).frames
    for t, gain, offset in [(1, 0.5 ** (1 - 1 / T), 0.1 * (1 - 1 / T)), (0, 0.5 ** (-1 / T), -0.1 / T)]:
        bg = bundle.frame_maps(t).weights[..., 0] > 0.99
        want = torch.tensor([0.8, 0.2, 0.2]) * gain + offset
        assert torch.allclose(out[t][bg], want, atol=0.02), (t, out[t][bg].mean(0), want)


def test_export_writes_the_shading(lit_fit, tmp_path):
    out = export(lit_fit, tmp_path / "exp")
    info = json.loads((out / "export.json").read_text())
    assert info["shading"] == "shading/%05d.exr" and "shading" in info["conventions"]
    maps = lit_fit.frame_maps(3, lit_fit.source_size, colour=False)
    written = read_exr_channels(out / "shading" / "00003.exr")
    assert np.allclose(written["RGB"], maps.gain.numpy(), atol=1e-5)
    assert np.allclose(written["offset"], maps.offset.numpy(), atol=1e-5)


def test_unshaded_fit_writes_no_shading(tiny_video, tmp_path):
    bundle = atlas.fit(tiny_video, tmp_path / "b", "fast", ["model.shading=none"], iters=3, quiet=True)
    assert bundle.model.shading is None and bundle.frame_maps(0).gain is None
    info = json.loads((export(bundle, tmp_path / "exp") / "export.json").read_text())
    assert info["shading"] is None and not (tmp_path / "exp" / "shading").exists()
