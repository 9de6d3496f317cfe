"""Diffusion editors end to end on tiny, randomly initialised models saved by the tests
(tests/tiny_diffusion.py), loaded through the real loader. Nothing touches the network.

Real Stable Diffusion 1.5 runs only when ATLAS_SD_MODEL points at it (skipped otherwise).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.errors import AtlasInputError
from editing import edit
from editing.models import ModelNotFoundError, Runtime, load_pipeline, structure_map
from tiny_diffusion import save_tiny_controlnet, save_tiny_depth, save_tiny_sd

REPO = Path(__file__).resolve().parent.parent
FAST = dict(steps=3, resolution=64, runtime=Runtime(quiet=True))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {"model": str(save_tiny_sd(root / "sd")), "controlnet": str(save_tiny_controlnet(root / "cn"))}


def _run(fitted, clip, tiny_models, **kwargs):
    return edit(fitted, frames=clip.frames, **{**tiny_models, **FAST, **kwargs})


def test_missing_models_give_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="hf download someone/not-cached"):
        load_pipeline("img2img", "someone/not-cached")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_pipeline("img2img", str(tmp_path / "missing"))
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not a model")
    with pytest.raises(AtlasInputError, match="must be .safetensors"):
        load_pipeline("img2img", str(pickle))


def test_a_cached_hub_id_loads_offline(tiny_models, tmp_path):
    """A hub id resolves from a Hugging Face cache laid out as `hf download` leaves it."""
    snapshot = tmp_path / "hub" / "models--tiny--sd" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abc")
    import shutil

    shutil.copytree(tiny_models["model"], snapshot)
    code = "from editing.models import load_pipeline; p = load_pipeline('img2img', 'tiny/sd'); print(type(p).__name__)"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("StableDiffusionImg2ImgPipeline")


def test_pipelines_share_one_model(tiny_models):
    a = load_pipeline("img2img", tiny_models["model"], runtime=Runtime(quiet=True))
    b = load_pipeline("inpaint", tiny_models["model"], tiny_models["controlnet"], runtime=Runtime(quiet=True))
    assert a.unet is b.unet and type(b).__name__ == "StableDiffusionControlNetInpaintPipeline"


def test_structure_maps(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    image = np.zeros((48, 40, 3), np.float32)
    image[10:30, 8:25] = rng.uniform(0.6, 1.0, 3)
    canny = structure_map(image, "canny")
    assert canny.shape == image.shape and set(np.unique(canny)) <= {0.0, 1.0}
    assert canny[15:25, 6:11].max() == 1.0 and canny[:5, :5].max() == 0  # an edge at the square's side, none in the flat corner
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    hed = structure_map(image, "hed", str(tmp_path))
    assert hed.shape == image.shape and 0.0 <= hed.min() and hed.max() <= 1.0
    monkeypatch.delenv("ATLAS_HED_WEIGHTS", raising=False)
    with pytest.raises(ModelNotFoundError, match="ATLAS_HED_WEIGHTS"):
        structure_map(image, "hed")
    depth = structure_map(image, "depth", str(save_tiny_depth(tmp_path / "dpt")))
    assert depth.shape == image.shape and depth.min() == 0.0 and depth.max() <= 1.0
    monkeypatch.delenv("ATLAS_DEPTH_MODEL", raising=False)
    with pytest.raises(ModelNotFoundError, match="hf download Intel/dpt-hybrid-midas"):
        structure_map(image, "depth")


def test_videdit_stays_in_its_region_and_repeats_for_a_seed(fitted, clip, tiny_models):
    bg = fitted.textures["background"]
    region = np.zeros(bg.shape[:2], np.float32)
    region[10:30, 20:50] = 1
    a = _run(fitted, clip, tiny_models, prompt="red bricks", method="videdit", layer="background", region_mask=region)
    edit_rgba = a.edits["background"]
    assert set(a.edits) == {"background"} and edit_rgba.shape == bg.shape
    assert edit_rgba[..., 3][region == 0].max() == 0.0 and edit_rgba[..., 3][region == 1].max() == 1.0
    assert a.frames.shape == clip.frames.shape
    # pixels that map outside the region are the source pixels exactly
    changed = (a.frames - clip.frames).abs().amax(-1) > 0
    assert changed.any() and not changed.all()
    b = _run(fitted, clip, tiny_models, prompt="red bricks", method="videdit", layer="background", region_mask=region)
    c = _run(fitted, clip, tiny_models, prompt="red bricks", method="videdit", layer="background", region_mask=region, seed=1)
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)


@pytest.mark.parametrize("inpaint", [False, True])
def test_videdit_default_region_is_the_layer_coverage(fitted, clip, tiny_models, inpaint):
    out = _run(fitted, clip, tiny_models, prompt="a red ball", method="videdit", controlnet="none", inpaint=inpaint)
    fg = fitted.textures["foreground"]
    assert set(out.edits) == {"foreground"}
    assert out.edits["foreground"][..., 3][fg[..., 3] <= 0.5].max() == 0.0
    assert out.edits["foreground"][..., 3][fg[..., 3] > 0.5].max() > 0.5


def test_stablevideo_keyframes_and_fusion(fitted, clip, tiny_models):
    from editing.stablevideo import choose_keyframes

    keys = choose_keyframes(fitted, 1, max_keyframes=3)
    assert keys[0] == 0 and len(keys) <= 3 and keys == sorted(keys)
    assert choose_keyframes(fitted, 1, stride=3) == [0, 3, 6]
    prompts = {"foreground": "a red ball", "background": "grass"}
    a = _run(fitted, clip, tiny_models, prompt=prompts, method="stablevideo", max_keyframes=3, fusion_steps=20)
    assert set(a.edits) == {"foreground", "background"}
    assert all(a.edits[n].shape == fitted.textures[n].shape for n in a.edits)
    assert {k.rsplit("_", 1)[0] for k in a.keyframes} == {"foreground", "background"}
    assert all(v.shape == clip.frames.shape[1:] for v in a.keyframes.values())
    assert a.frames.shape == clip.frames.shape
    b = _run(fitted, clip, tiny_models, prompt=prompts, method="stablevideo", max_keyframes=3, fusion_steps=20)
    assert torch.equal(a.frames, b.frames)


def test_aggregation_learns_to_rebuild_an_atlas():
    from editing.stablevideo import _stack, train_aggregation

    rng = np.random.default_rng()
    target = np.concatenate([rng.uniform(0, 1, (40, 40, 3)), np.ones((40, 40, 1))], -1).astype(np.float32)
    halves = []
    for cols in (slice(0, 25), slice(15, 40)):
        p = np.zeros_like(target)
        p[:, cols] = target[:, cols]
        halves.append(p)
    net = train_aggregation(halves, target, np.ones((40, 40), bool), steps=30, seed=0)
    with torch.no_grad():
        fused = net(_stack(halves))[0].permute(1, 2, 0).numpy()
    assert np.abs(fused - target[..., :3]).max() < 0.05


def test_diffusion_atlas_adapts_then_removes_its_lora(fitted, clip, tiny_models):
    kw = dict(prompt="a red ball", method="diffusion-atlas", model=tiny_models["model"])
    plain = edit(fitted, frames=clip.frames, **FAST, **kw, lora_steps=0)
    adapted = edit(fitted, frames=clip.frames, **FAST, **kw, lora_steps=3)
    again = edit(fitted, frames=clip.frames, **FAST, **kw, lora_steps=3)
    assert torch.equal(adapted.frames, again.frames) and not torch.equal(plain.frames, adapted.frames)
    pipe = load_pipeline("txt2img", tiny_models["model"], runtime=Runtime(quiet=True))
    assert not getattr(pipe.unet, "peft_config", {})
    fg = fitted.textures["foreground"]
    assert adapted.edits["foreground"][..., 3][fg[..., 3] <= 0.5].max() == 0.0


def test_ddim_inversion_round_trips(tiny_models):
    """Inverting latents and sampling back under the same prompt without guidance returns
    them (up to DDIM's first-order error); another prompt with guidance moves them."""
    from editing.diffuse import PromptEdit
    from editing.diffusion_atlas import invert_and_regenerate

    pipe = load_pipeline("txt2img", tiny_models["model"], runtime=Runtime(quiet=True))
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        embeds = pipe.encode_prompt("abc", pipe.device, 1, False)[0]
    same = invert_and_regenerate(pipe, z, PromptEdit("abc", steps=10, strength=0.5, guidance=1.0), embeds, quiet=True)
    other = invert_and_regenerate(pipe, z, PromptEdit("xyz", steps=10, strength=0.5, guidance=7.5), embeds, quiet=True)
    assert (same - z).abs().mean() < 0.1 * z.abs().mean()
    assert (same - z).abs().mean() < 0.25 * (other - z).abs().mean()


def test_cli_prompt_edit_writes_video_atlases_and_keyframes(fitted, tiny_models, tmp_path):
    from atlas.cli import main

    out = tmp_path / "edit.mp4"
    rc = main(["edit", str(fitted.path), "-o", str(out), "--prompt", "a red ball", "--method", "stablevideo", "--model", tiny_models["model"],
               "--controlnet", tiny_models["controlnet"], "--steps", "2", "--resolution", "64", "--max-keyframes", "2", "--quiet"])
    assert rc == 0 and out.is_file()
    assert (tmp_path / "edit_atlas" / "foreground.png").is_file()
    assert len(list((tmp_path / "edit_keyframes").glob("foreground_*.png"))) == 2


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x", "--method", "videdit", "--model", "nobody/nothing"], "hf download nobody/nothing"),
    (["--strength", "0.5"], "need --prompt"),
    (["--prompt", "x", "--method", "videdit", "--lora-steps", "3"], "videdit does not take"),
    (["--prompt", "x", "--method", "stablevideo", "--strength", "1.5"], "strength"),
])
def test_cli_prompt_errors_exit_2(fitted, tmp_path, capsys, argv, message):
    from atlas.cli import main

    assert main(["edit", str(fitted.path), "-o", str(tmp_path / "o.mp4"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.skipif(not os.environ.get("ATLAS_SD_MODEL"), reason="set ATLAS_SD_MODEL to a local Stable Diffusion 1.5 to run")
def test_real_stable_diffusion_videdit(fitted, clip):
    out = edit(fitted, frames=clip.frames, prompt="a red brick wall", method="videdit", layer="background", controlnet="none", steps=20)
    assert out.frames.shape == clip.frames.shape


def test_diffusion_atlas_refits_opacity_to_a_grown_silhouette(fitted, clip, tiny_models):
    import cv2

    fg = fitted.textures["foreground"]
    old = fg[..., 3] > 0.5
    grown = cv2.dilate(old.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    before = [p.detach().clone() for p in fitted.model.parameters()]
    out = edit(fitted, frames=clip.frames, prompt="a bigger ball", method="diffusion-atlas", model=tiny_models["model"], lora_steps=0,
               shape_mask=grown.astype(np.float32), refit_steps=150, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, fitted.model.parameters())), "the given bundle must not change"
    assert out.bundle is not fitted and (out.bundle.textures["foreground"][..., 3] > 0.5).sum() > old.sum()
    # pixels whose foreground mapping lands on the new ring now belong to the foreground
    ring = torch.from_numpy((grown & ~old).astype(np.float32))[..., None]
    from propagation.sample import sample

    gained = []
    for t in range(fitted.num_frames):
        old_maps, new_maps = fitted.frame_maps(t), out.bundle.frame_maps(t)
        on_ring = (sample(ring, new_maps.uv[..., 1, :])[..., 0] > 0.99) & (old_maps.weights[..., 1] < 0.5)
        gained.append(new_maps.weights[..., 1][on_ring])
    gained = torch.cat(gained)
    assert gained.numel() > 20 and gained.mean() > 0.7
    assert out.edits["foreground"][..., 3][~grown].max() == 0.0
    # the new silhouette is composited as fitted: the source frames' edges are the old object's
    from propagation.render import overlay_frame

    by_index = {out.bundle.layer_names.index(name): rgba for name, rgba in out.edits.items()}
    assert torch.equal(out.frames[2], overlay_frame(clip.frames[2], out.bundle.frame_maps(2), by_index))


def test_stablevideo_carries_the_first_keyframe_forward(fitted, clip, monkeypatch):
    """With a stand-in model that paints keyframe 0 red and leaves later keyframes as they
    start, every later keyframe must start red where the atlas already knows the layer,
    and the video's foreground must come out red."""
    import editing.stablevideo as sv

    def painter(edit, image, strength=None, prompt=None, seed_offset=0, mask=None):
        return np.broadcast_to(np.float32([1, 0, 0]), image.shape).copy() if seed_offset == 0 else image

    monkeypatch.setattr(sv, "sdedit", painter)
    out = edit(fitted, frames=clip.frames, prompt="red", method="stablevideo", max_keyframes=3, fusion_steps=50, **FAST)
    red = lambda img: (img[..., 0] > 0.8) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)  # noqa: E731
    later = [k for k in out.keyframes if not k.endswith("_0000")]
    assert later
    for key in later:
        t = int(key.rsplit("_", 1)[1])
        fg = (fitted.frame_maps(t).weights[..., 1] > 0.9).numpy()
        assert red(out.keyframes[key])[fg].mean() > 0.8
    fg = torch.stack([fitted.frame_maps(t).weights[..., 1] > 0.9 for t in range(fitted.num_frames)])
    assert red(out.frames.numpy())[fg.numpy()].mean() > 0.8


@pytest.mark.parametrize("matte", ["guided", "fitted"])
def test_stablevideo_splats_keyframes_with_the_edits_matte(fitted, clip, monkeypatch, matte):
    """Each keyframe goes into the atlas with the layer weights the render composites with."""
    import editing.stablevideo as sv
    from propagation.render import matted_maps

    used = {}
    real = sv._splat

    def recording(width, height, maps, layer, image):
        used.setdefault(len(used), maps.weights.clone())
        return real(width, height, maps, layer, image)

    monkeypatch.setattr(sv, "sdedit", lambda edit, image, **_: image)
    monkeypatch.setattr(sv, "_splat", recording)
    edit(fitted, frames=clip.frames, prompt="x", method="stablevideo", max_keyframes=2, fusion_steps=5, matte=matte, **FAST)
    first = used[0]  # keyframe 0's edited splat
    assert torch.equal(first, matted_maps(fitted, 0, clip.frames[0], matte).weights)
    assert torch.equal(first, fitted.frame_maps(0).weights) == (matte == "fitted")


def test_thin_gaps_between_keyframes_are_filled_far_ones_are_not():
    from editing.stablevideo import fill_gaps

    rgb = np.zeros((40, 60, 3), np.float32)
    rgb[:, :20] = [0.2, 0.4, 0.6]
    covered = np.zeros((40, 60), bool)
    covered[:, :20] = True
    seen = np.ones((40, 60), bool)
    filled, edited = fill_gaps(rgb, covered, seen, reach=5)
    assert edited[:, 20:25].all() and not edited[:, 30:].any()  # near gaps filled, far ones left to the source
    assert np.allclose(filled[:, 20:24], [0.2, 0.4, 0.6], atol=0.05)
    assert np.array_equal(filled[:, :20], rgb[:, :20])
