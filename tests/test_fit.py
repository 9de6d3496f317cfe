"""A short fit of the synthetic clip, checked against its ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import atlas
from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from atlas.io import Video


def test_reconstruction_psnr(fitted):
    m = fitted.meta.metrics
    assert m["psnr_mean"] > 28.0, m
    assert len(m["psnr_per_frame"]) == fitted.num_frames
    assert min(m["psnr_per_frame"]) > 25.0


def test_foreground_opacity_matches_true_mask(fitted, clip):
    alpha = torch.stack([1.0 - fitted.frame_maps(t).weights[..., 0] for t in range(fitted.num_frames)])
    pred, true = alpha > 0.5, clip.masks > 0.5
    iou = (pred & true).sum().item() / (pred | true).sum().item()
    assert iou > 0.75, iou


def test_true_correspondences_share_atlas_coordinates(fitted, clip):
    """Background points seen in two frames must map to the same background atlas point."""
    rng = np.random.default_rng(0)
    g = fitted.model.geom
    mapping = fitted.model.mappings[0]
    errors = []
    for t1, t2 in [(0, 3), (1, 7), (2, 5), (0, 7)]:
        p1 = rng.uniform([4, 4], [g.width - 5, g.height - 5], size=(400, 2)).astype(np.float32)
        p2 = p1 + clip.camera[t1] - clip.camera[t2]
        inside = (p2[:, 0] >= 1) & (p2[:, 0] < g.width - 2) & (p2[:, 1] >= 1) & (p2[:, 1] < g.height - 2)
        far = lambda p, t: np.linalg.norm(p + 0.5 - clip.sprite_centre[t], axis=1) > clip.sprite_radius + 3
        keep = inside & far(p1, t1) & far(p2, t2)
        a, b = torch.from_numpy(p1[keep]), torch.from_numpy(p2[keep])
        with torch.no_grad():
            uv1 = mapping(a, torch.full((len(a),), t1))
            uv2 = mapping(b, torch.full((len(b),), t2))
        errors.append(((uv1 - uv2) * mapping.pixels_per_uv).norm(dim=-1))
    err = torch.cat(errors)
    assert len(err) > 500
    # sub-pixel for most points; the tail sits where the sprite hid the background in other frames
    assert err.median() < 0.5 and err.quantile(0.9) < 1.5, (err.median(), err.quantile(0.9))


def test_bundle_round_trip(fitted):
    again = AtlasBundle.load(fitted.path)
    assert again.layer_names == ["background", "foreground"]
    assert again.size == fitted.size and again.num_frames == fitted.num_frames
    assert torch.equal(again.render(), fitted.render())
    meta = json.loads((fitted.path / "bundle.json").read_text())
    assert meta["format_version"] == 3 and meta["seed"] == 0
    for layer in meta["layers"]:
        tex = again.textures[layer["name"]]
        assert tex.shape == (layer["atlas_size"][1], layer["atlas_size"][0], 4)
        assert 0.05 < tex[..., 3].mean() < 1.0  # coverage is a real subset of the texture
    assert again.cache is not None and again.cache.flow_fwd.shape[0] == fitted.num_frames - 1


def test_atlas_is_at_least_source_density(fitted, clip):
    bg = fitted.textures["background"]
    w, h = fitted.size
    assert bg.shape[1] >= w + clip.camera[:, 0].max() - 1
    assert bg.shape[0] >= h + clip.camera[:, 1].max() - 1


def test_format_1_bundle_still_loads(fitted, tmp_path):
    """Format 1 stored each hash table as [L, S, F], every level padded to S rows."""
    import copy as copy_module
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "b"
    shutil.copytree(fitted.path, copy)
    state = load_file(str(copy / "model.safetensors"))
    for key in [k for k in state if k.endswith(".offsets")]:
        offsets, table = state.pop(key), state[key[: -len("offsets")] + "table"]
        rows = (offsets[1:] - offsets[:-1]).tolist()
        padded = torch.randn(len(rows), max(rows), table.shape[1])  # rows no level reads: anything
        for lvl, n in enumerate(rows):
            padded[lvl, :n] = table[offsets[lvl] : offsets[lvl + 1]]
        state[key[: -len("offsets")] + "table"] = padded
    del state["shading.coef"]  # shading came with format 3
    save_file(state, str(copy / "model.safetensors"))
    meta = json.loads((copy / "bundle.json").read_text())
    meta["format_version"] = 1
    (copy / "bundle.json").write_text(json.dumps(meta))
    unshaded = copy_module.deepcopy(fitted.model)
    unshaded.shading = None
    assert torch.equal(atlas.load(str(copy)).render(), AtlasBundle(unshaded, fitted.meta, fitted.textures).render())


def test_a_bundle_fitted_before_colour_lod_renders_as_it_was_fitted(fitted, tmp_path):
    """A config without the keys: the colour grids were fitted at full detail for every frame."""
    import copy as copy_module
    import shutil

    from safetensors.torch import load_file, save_file

    assert fitted.model.cfg.colour_lod
    copy = tmp_path / "b"
    shutil.copytree(fitted.path, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["config"]["model"]["colour_lod"]
    del meta["config"]["model"]["frame_blur"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    state = load_file(str(copy / "model.safetensors"))
    del state["blur"]
    save_file(state, str(copy / "model.safetensors"))
    old = atlas.load(str(copy))
    assert not old.model.cfg.colour_lod and old.model.blur is None
    full_detail = copy_module.deepcopy(fitted.model)
    full_detail.cfg.colour_lod = False
    assert torch.equal(old.render(), AtlasBundle(full_detail, fitted.meta, fitted.textures).render())


def test_a_bundle_fitted_with_a_blur_per_layer_renders_as_it_was_fitted(fitted, tmp_path):
    """The first bundles with a blur learned one per frame and layer and have no
    blur_per_layer key: they load with that shape and read each layer at its own factor."""
    import shutil

    from safetensors.torch import load_file, save_file

    num_layers = len(fitted.layer_names)
    assert fitted.model.blur.shape == (fitted.num_frames, 1)  # one factor a frame, for every layer
    copy = tmp_path / "b"
    shutil.copytree(fitted.path, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["config"]["model"]["blur_per_layer"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    state = load_file(str(copy / "model.safetensors"))
    state["blur"] = state["blur"].expand(-1, num_layers).contiguous()
    save_file(state, str(copy / "model.safetensors"))
    old = atlas.load(str(copy))
    assert old.model.cfg.blur_per_layer and old.model.blur.shape == (fitted.num_frames, num_layers)
    assert torch.equal(old.render(), fitted.render())
    state["blur"][:, 1:] += 1.0  # the foreground read twice as coarse: only its own factor changed
    save_file(state, str(copy / "model.safetensors"))
    assert not torch.equal(atlas.load(str(copy)).render(), fitted.render())


def test_a_blurred_frame_is_read_coarser_and_info_says_so(tmp_path, capsys):
    import cv2

    from atlas.cli import main
    from atlas.synthetic import make_clip

    clip = make_clip(num_frames=8, width=64, height=48, seed=2)
    frames = clip.frames.clone()
    frames[4] = torch.from_numpy(cv2.GaussianBlur(frames[4].numpy(), (0, 0), 2.0))  # as if the camera shook in frame 4
    # a steady pan sees the background at the atlas's finest density in every frame, which has
    # no finer level to drop: a denser grid gives a blur somewhere to go
    bundle = atlas.fit(Video(frames, clip.fps, "shaken", (0, 8)), tmp_path / "b", "fast",
                       ["train.checkpoint_every=0", "model.colour_density=2"], iters=300, quiet=True, seed=0)
    factor = torch.exp2(bundle.model.blur.detach()[:, 0])
    assert factor[4] > 1.3 * torch.cat([factor[:4], factor[5:]]).max()
    assert main(["info", str(tmp_path / "b")]) == 0
    assert "background     " in (out := capsys.readouterr().out) and "blurred up to" in out and "(frame 4)" in out


def test_a_bundle_with_a_blur_that_is_not_finite_is_refused(fitted, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "b"
    shutil.copytree(fitted.path, copy)
    state = load_file(str(copy / "model.safetensors"))
    state["blur"][0, 0] = float("nan")
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(AtlasInputError, match="blur holds NaN or infinite values"):
        atlas.load(str(copy))


def test_future_format_rejected(fitted, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(fitted.path, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["format_version"] = 99
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(AtlasInputError, match="upgrade"):
        atlas.load(str(copy))


def test_deterministic_for_a_seed(tiny_video, tmp_path):
    a = atlas.fit(tiny_video, tmp_path / "a", "fast", iters=6, quiet=True, seed=3)
    b = atlas.fit(tiny_video, tmp_path / "b", "fast", iters=6, quiet=True, seed=3)
    c = atlas.fit(tiny_video, tmp_path / "c", "fast", iters=6, quiet=True, seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_frames_fit_alike_in_any_stored_depth(tiny_video, tmp_path):
    """Frames kept in 8 bits (3 bytes a pixel) fit exactly as the same values kept in 16
    bits, and close to them kept as float16 (6 bytes, not float32's 12); the preprocessing
    arrays are kept compact (float16 flows, uint8 masks)."""
    u8 = (tiny_video.frames * 255 + 0.5).to(torch.uint8)
    kept = {"u8": u8, "u16": u8.to(torch.int32).mul(257).to(torch.uint16), "float": u8.float() / 255}
    fits = {k: atlas.fit(Video(v, tiny_video.fps, k, (0, 4)), tmp_path / k, "fast", iters=6, quiet=True, seed=3)
            for k, v in kept.items()}
    sa, sb = fits["u8"].model.state_dict(), fits["u16"].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    psnr = {k: np.array(b.meta.metrics["psnr_per_frame"]) for k, b in fits.items()}
    assert np.array_equal(psnr["u8"], psnr["u16"])
    assert np.abs(psnr["float"] - psnr["u8"]).max() < 0.2
    a = fits["u8"]
    assert a.cache.flow_fwd.dtype == torch.float16 and a.cache.masks.dtype == torch.uint8 and a.cache.valid_fwd.dtype == torch.bool


def test_fit_frames_in_memory(tiny_video, tmp_path):
    from propagation.render import source_frames

    u8 = (tiny_video.frames.numpy() * 255 + 0.5).astype(np.uint8)
    bundle = atlas.fit(u8, tmp_path / "a", "fast", iters=3, quiet=True)
    assert bundle.meta.source.path == "<array>" and bundle.num_frames == 4
    with pytest.warns(UserWarning, match="fitted from frames in memory"):
        assert torch.equal(source_frames(bundle), bundle.render())
    given = torch.from_numpy(u8.astype(np.float32) / 255)
    assert source_frames(bundle, given) is given
    # a Video is resized to size= (the source's size remembered); frames= would be ignored, so it is refused
    half = atlas.fit(tiny_video, tmp_path / "b", "fast", size=(20, 16), iters=3, quiet=True)
    assert half.size == (20, 16) and half.source_size == (40, 32)
    with pytest.raises(AtlasInputError, match="fitted whole"):
        atlas.fit(tiny_video, tmp_path / "c", "fast", frames="0:2", iters=3, quiet=True)


def test_atlases_and_quality_do_not_depend_on_the_kept_frame_maps(tiny_video, tmp_path, monkeypatch):
    """A shot too long for the map cache bakes from every frame all the same."""
    import atlas.bundle

    kept = atlas.fit(tiny_video, tmp_path / "a", "fast", iters=4, quiet=True, seed=2)
    monkeypatch.setattr(atlas.bundle, "MAP_CACHE_BYTES", 0)
    streamed = atlas.fit(tiny_video, tmp_path / "b", "fast", iters=4, quiet=True, seed=2)
    assert len(kept._maps) == tiny_video.frames.shape[0] and not streamed._maps
    for name in kept.layer_names:
        assert np.array_equal(kept.textures[name], streamed.textures[name])
        assert np.array_equal(kept.quality[name], streamed.quality[name])
    assert kept.meta.metrics["layers"] == streamed.meta.metrics["layers"]
    assert any(kept.textures[n][..., 3].mean() > 0 for n in kept.layer_names)  # the comparison is not of empty coverage


def test_time_budget_and_resume(tiny_video, tmp_path):
    out = tmp_path / "r"
    first = atlas.fit(tiny_video, out, "fast", ["train.checkpoint_every=5"], iters=10_000, time_budget=1.5, quiet=True)
    assert 0 < first.meta.metrics["iterations"] < 10_000
    # a checkpoint left by an interrupted run is picked up by --resume
    ckpt = out.with_name(out.name + ".ckpt")
    assert not ckpt.exists()  # a finished fit cleans up after itself
    from atlas import train

    saved = {}
    real = train._Checkpoint.remove
    train._Checkpoint.remove = lambda self: saved.setdefault("dir", self.dir)
    try:
        atlas.fit(tiny_video, tmp_path / "s", "fast", ["train.checkpoint_every=5"], iters=12, quiet=True)
    finally:
        train._Checkpoint.remove = real
    state = torch.load(saved["dir"] / "state.pt", weights_only=True)
    assert state["step"] == 10
    resumed = atlas.fit(tiny_video, tmp_path / "s", "fast", ["train.checkpoint_every=5"], iters=12, quiet=True, resume=True)
    assert resumed.meta.metrics["iterations"] == 12
    assert not saved["dir"].exists()


def test_codef_single_layer(tiny_video, tmp_path):
    b = atlas.fit(tiny_video, tmp_path / "codef", "codef", iters=5, quiet=True)
    assert b.layer_names == ["background"]
    assert b.frame_maps(0).weights.shape[-1] == 1


def test_user_masks_are_used(clip, tmp_path):
    from atlas.io import write_png

    masks = tmp_path / "masks"
    masks.mkdir()
    for t, m in enumerate(clip.masks):
        write_png(masks / f"{t:05d}.png", m.numpy())
    video = Video(clip.frames, clip.fps, "synthetic", (0, clip.frames.shape[0]))
    b = atlas.fit(video, tmp_path / "m", "fast", masks=str(masks), iters=3, quiet=True)
    assert b.meta.preprocess["masks"] == "user"
    assert torch.equal(b.cache.masks.float(), clip.masks)
