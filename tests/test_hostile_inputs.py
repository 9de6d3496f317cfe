"""The CLI against careless or hostile input: every case exits 2 with one line, leaves no
partial output and changes no input (checksums before and after).

Add a case to CASES: an id, the argv (built from the paths of the `world` fixture), and the
text the one-line error must contain. Cases that need more set-up have their own tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.cli import main
from atlas.io import write_png, write_video
from atlas.synthetic import make_clip

FIT = ["--config", "fast", "--iters", "3", "--quiet", "--set", "train.checkpoint_every=0"]


def _tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (symlinks by their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs a user has: a PNG sequence, a movie, a mask folder, images, and bundles fitted
    from the sequence and from the movie."""
    root = tmp_path_factory.mktemp("hostile")
    clip = make_clip(num_frames=6, width=48, height=32, seed=2)
    paths = {"root": root, "good": write_video(clip.frames, root / "good"), "movie": write_video(clip.frames, root / "src.mp4")}
    masks = root / "masks"
    masks.mkdir()
    for i, m in enumerate(clip.masks):
        write_png(masks / f"{i:05d}.png", m.numpy())
    paths["masks"] = masks
    assert main(["fit", str(paths["good"]), "-o", str(root / "B.atlas"), *FIT]) == 0
    assert main(["fit", str(paths["movie"]), "-o", str(root / "M.atlas"), *FIT]) == 0
    paths["bundle"], paths["movie_bundle"] = root / "B.atlas", root / "M.atlas"
    bg = json.loads((root / "B.atlas" / "bundle.json").read_text())["layers"][0]["atlas_size"]
    paths["paint"] = root / "paint.png"
    write_png(paths["paint"], np.ones((bg[1], bg[0], 4), np.float32))
    (root / "prev_atlas").mkdir()  # a previous edit's output, touched up and passed back with --atlas
    shutil.copy(paths["paint"], root / "prev_atlas" / "background_edit.png")
    paths["pickle"] = root / "sam.pth"
    torch.save({"weights": torch.zeros(2), "payload": os.system}, paths["pickle"])  # a checkpoint that carries code
    paths["broken"] = root / "sam.safetensors"
    paths["broken"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    paths["out"] = root / "out"
    paths["out"].mkdir()
    return paths


def _one_line_error(capsys, argv: list[str], expect: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert "Traceback" not in err and "weights_only" not in err, err
    return err


def _no_debris(root: Path) -> None:
    debris = [p for p in root.rglob(".*") if any(tag in p.name for tag in (".tmp-", ".old-", ".lock"))]
    assert not debris, debris


CASES = [
    # data loss: the bundle's own source, the bundle itself, any input of the command
    ("render over its source folder", lambda w: ["render", w["bundle"], "-o", w["good"]], "the bundle's source footage"),
    ("edit over its source folder", lambda w: ["edit", w["bundle"], "-o", w["good"], "--atlas", f"background={w['paint']}"],
     "the bundle's source footage"),
    ("render over its source movie", lambda w: ["render", w["movie_bundle"], "-o", w["movie"]], "the bundle's source footage"),
    ("render into the bundle", lambda w: ["render", w["bundle"], "-o", w["bundle"] / "cache" / "r.mp4"], "lies inside the bundle"),
    ("export over the folder holding the bundle", lambda w: ["export", w["bundle"], "-o", w["root"]], "holds the bundle"),
    ("edit over the atlas edit it is given", lambda w: ["edit", w["bundle"], "-o", w["root"] / "prev.mp4", "--atlas",
                                                        f"background={w['root'] / 'prev_atlas' / 'background_edit.png'}"],
     "holds --atlas background"),
    ("fit over its footage", lambda w: ["fit", w["good"], "-o", w["good"], *FIT], "the footage"),
    ("fit over its masks", lambda w: ["fit", w["good"], "-o", w["masks"], "--masks", w["masks"], *FIT], "--masks"),
    # outputs that name nothing
    ("-o .", lambda w: ["render", w["bundle"], "-o", "."], "name of a new file or folder"),
    ("-o ''", lambda w: ["fit", w["good"], "-o", "", *FIT], "name of a new file or folder"),
    # resource exhaustion
    ("huge MLP", lambda w: ["fit", w["good"], "-o", w["out"] / "h.atlas", *FIT, "--set", "model.hidden=100000000"], "<= 1024"),
    ("huge batch", lambda w: ["fit", w["good"], "-o", w["out"] / "h.atlas", *FIT, "--set", "train.batch=100000000"], "<= 2097152"),
    ("wide MLP and batch at their limits", lambda w: ["fit", w["good"], "-o", w["out"] / "h.atlas", *FIT, "--set", "model.hidden=1024",
                                                      "--set", "train.batch=2097152"], "GB of memory"),
    ("huge --size", lambda w: ["fit", w["good"], "-o", w["out"] / "h.atlas", *FIT, "--size", "100000x100000"], "--size"),
    ("huge --size of a movie", lambda w: ["fit", w["movie"], "-o", w["out"] / "h.atlas", *FIT, "--size", "100000x100000"], "--size"),
    # weights that are not weights
    ("pickled SAM checkpoint", lambda w: ["fit", w["good"], "-o", w["out"] / "s.atlas", *FIT, "--sam-checkpoint", w["pickle"],
                                          "--sam-prompt", "10,10"], "pickled objects"),
    ("broken SAM safetensors", lambda w: ["fit", w["good"], "-o", w["out"] / "s.atlas", *FIT, "--sam-checkpoint", w["broken"],
                                          "--sam-prompt", "10,10"], "not a valid .safetensors"),
    # silently surprising
    ("--sam-prompt alone", lambda w: ["fit", w["good"], "-o", w["out"] / "s.atlas", *FIT, "--sam-prompt", "10,10"], "needs --sam-checkpoint"),
    ("--masks a file", lambda w: ["fit", w["good"], "-o", w["out"] / "s.atlas", *FIT, "--masks", w["paint"]], "is a file"),
    ("unknown key", lambda w: ["fit", w["good"], "-o", w["out"] / "s.atlas", *FIT, "--set", "model.nope=1"], "'model.nope'"),
]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_with_inputs_untouched(world, capsys, argv, expect):
    before = _tree_digest(world["root"])
    t0 = time.perf_counter()
    _one_line_error(capsys, [str(a) for a in argv(world)], expect)
    assert time.perf_counter() - t0 < 60  # refused up front, not after decoding or fitting a 671 GB shot
    assert _tree_digest(world["root"]) == before
    _no_debris(world["root"])


def test_symlinked_output_is_followed(world, capsys, tmp_path):
    """A link to the source is refused like the source; a link elsewhere stays a link and
    its target gets the render."""
    link = world["out"] / "link"
    link.symlink_to(world["good"])
    try:
        before = _tree_digest(world["root"])
        _one_line_error(capsys, ["render", str(world["bundle"]), "-o", str(link)], "the bundle's source footage")
        assert _tree_digest(world["root"]) == before
        elsewhere = tmp_path / "renders"
        link.unlink()
        link.symlink_to(elsewhere)
        assert main(["render", str(world["bundle"]), "-o", str(link), "--quiet"]) == 0
        assert link.is_symlink() and len(list(elsewhere.glob("*.png"))) == 6
        assert main(["render", str(world["bundle"]), "-o", str(link), "--quiet"]) == 0  # and again, replacing our own render
        assert link.is_symlink() and len(list(elsewhere.glob("*.png"))) == 6
        _no_debris(world["root"])
        _no_debris(tmp_path)
    finally:
        link.unlink()


def test_read_only_output_folder_refused_before_work(world, capsys, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a permission allows; a read-only mount refuses even root
        target = Path("/sys/atlas-test.atlas")
        if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
            pytest.skip("no read-only folder to test with")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "x.atlas"
    _one_line_error(capsys, ["fit", str(world["good"]), "-o", str(target), *FIT], "not writable")
    assert not target.exists()


def _corrupt(world: dict[str, Path], tmp_path: Path, change) -> Path:
    copy = tmp_path / "c.atlas"
    shutil.copytree(world["bundle"], copy)
    meta = json.loads((copy / "bundle.json").read_text())
    change(meta)
    (copy / "bundle.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize("change", [
    lambda m: m["layers"][1].update(name="../../../pwn"),
    lambda m: m.pop("metrics"),
    lambda m: m.pop("source"),
    lambda m: m["layers"][0].pop("atlas_size"),
    lambda m: m.update(layers="oops"),
    lambda m: m["source"].update(size=[-4, 10**9]),
    lambda m: m["metrics"].update(psnr_per_frame=[1.0]),
    lambda m: m["metrics"].update(shading_gain_per_frame="bright"),
    lambda m: m["config"]["model"].update(num_foregrounds=3),
], ids=["layer path traversal", "no metrics", "no source", "no atlas_size", "layers not a list", "negative size",
        "per-frame PSNR of the wrong length", "per-frame shading not numbers", "config with another layer count"])
def test_corrupt_bundle_json_is_one_line(world, capsys, tmp_path, change):
    bad = _corrupt(world, tmp_path, change)
    for argv in (["info", str(bad)], ["export", str(bad), "-o", str(tmp_path / "exp")], ["render", str(bad), "-o", str(tmp_path / "r")]):
        _one_line_error(capsys, argv, "bundle is corrupt")
    assert not (tmp_path / "exp").exists() and not (tmp_path / "r").exists()
    assert not list(tmp_path.parent.parent.rglob("pwn"))


def test_bundle_files_that_are_not_ours(world, capsys, tmp_path):
    for name, data in (("model.safetensors", b"junk"), ("cache/preprocess.safetensors", b"\x00" * 64)):
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(world["bundle"], copy)
        (copy / name).write_bytes(data)
        _one_line_error(capsys, ["info", str(copy)], "bundle is corrupt")


def test_bundle_files_share_one_mode(world):
    """safetensors and tempfile make private files; a bundle on a shared volume must be
    readable by the other users as any other new file is."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(world["bundle"]): p.stat().st_mode & 0o777 for p in world["bundle"].rglob("*")}
    assert modes[Path("cache/preprocess.safetensors")] == 0o666 & ~umask
    assert {m for p, m in modes.items() if (world["bundle"] / p).is_file()} == {0o666 & ~umask}
    assert {m for p, m in modes.items() if (world["bundle"] / p).is_dir()} == {0o777 & ~umask}


def test_frames_too_small_for_flow(capsys, tmp_path):
    from atlas.io import write_video

    write_video(torch.rand(4, 9, 9, 3), tmp_path / "tiny")
    _one_line_error(capsys, ["fit", str(tmp_path / "tiny"), "-o", str(tmp_path / "o"), *FIT], "too small for optical flow")
    assert not (tmp_path / "o").exists()


def test_nan_in_a_bundles_tensors_is_corrupt(world, capsys, tmp_path):
    """A NaN weight would render black frames, a NaN flow poison tracks: both refused."""
    from safetensors.torch import load_file, save_file

    for name, key in (("model.safetensors", "alpha_grid.table"), ("cache/preprocess.safetensors", "flow_fwd")):
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(world["bundle"], copy)
        tensors = load_file(str(copy / name))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[7] = float("nan")
        save_file(tensors, str(copy / name))
        for argv in (["info", str(copy)], ["render", str(copy), "-o", str(tmp_path / "r.mp4")]):
            _one_line_error(capsys, argv, "NaN or infinite")
        assert not (tmp_path / "r.mp4").exists()


def test_unreadable_bundle_file_is_a_permission_error(world, capsys, monkeypatch):
    import safetensors.torch

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(safetensors.torch, "load_file", denied)
    monkeypatch.setattr("atlas.bundle.load_file", denied)
    _one_line_error(capsys, ["info", str(world["bundle"])], "permission denied")


@pytest.mark.parametrize("what,data", [("state.pt", b"PK\x03\x04 truncated"), ("meta.json", b"{nope"),
                                       ("preprocess.safetensors", b"junk")])
def test_corrupt_checkpoint_on_resume(world, capsys, tmp_path, monkeypatch, what, data):
    from atlas.train import _Checkpoint

    out = tmp_path / "r.atlas"
    args = ["fit", str(world["good"]), "-o", str(out), "--config", "fast", "--quiet", "--iters", "4"]
    with monkeypatch.context() as m:  # the checkpoint an interrupted fit leaves behind
        m.setattr(_Checkpoint, "remove", lambda self: None)
        assert main(args + ["--set", "train.checkpoint_every=1"]) == 0
    ckpt = tmp_path / "r.atlas.ckpt"
    assert {p.name for p in ckpt.iterdir()} == {"meta.json", "preprocess.safetensors", "state.pt"}
    (ckpt / what).write_bytes(data)
    before = _tree_digest(tmp_path)
    _one_line_error(capsys, args + ["--resume"], "is corrupt")
    assert _tree_digest(tmp_path) == before


def test_gaps_in_a_sequence_are_refused_unless_allowed(world, capsys, tmp_path):
    seq = tmp_path / "plate"
    seq.mkdir()
    for i, f in enumerate(sorted(world["good"].glob("*.png"))):
        if i != 3:
            shutil.copy(f, seq / f"plate.{i + 100:04d}.png")
    _one_line_error(capsys, ["fit", str(seq / "plate.%04d.png"), "-o", str(tmp_path / "g.atlas"), *FIT], "frame 103 is missing")
    _one_line_error(capsys, ["fit", str(seq), "-o", str(tmp_path / "g.atlas"), *FIT], "frame 103 is missing")
    assert main(["fit", str(seq / "plate.%04d.png"), "-o", str(tmp_path / "g.atlas"), *FIT, "--allow-gaps"]) == 0
    assert json.loads((tmp_path / "g.atlas" / "bundle.json").read_text())["source"]["num_frames"] == 5


def test_frame_range_past_the_end_warns(world, capsys, tmp_path):
    with pytest.warns(UserWarning, match=r"--frames 0:999: .* ends at frame 6; using 0:6"):
        assert main(["fit", str(world["good"]), "-o", str(tmp_path / "f.atlas"), *FIT, "--frames", "0:999"]) == 0


def test_info_reports_every_layer(world, capsys):
    capsys.readouterr()
    assert main(["info", str(world["bundle"])]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mapping:")]
    assert [ln.split()[1] for ln in lines] == ["background", "foreground"]


def _atlas(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "atlas.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_fits_to_one_output(world, tmp_path):
    """The second fit to an output another fit is writing is refused (exit 2) at once; the
    first finishes as if alone."""
    out = tmp_path / "same.atlas"
    args = ["fit", str(world["good"]), "-o", str(out), "--config", "fast", "--quiet", "--iters", "100000", "--time-budget", "20"]
    first = _atlas(*args)
    lock = tmp_path / ".same.atlas.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists(), first.communicate()
    second = _atlas(*args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "another atlas fit is writing" in err and len(err.strip().splitlines()) == 1, err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (out / "bundle.json").is_file() and not lock.exists() and not (tmp_path / "same.atlas.ckpt").exists()
