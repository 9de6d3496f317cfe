"""The `atlas` command end to end on a tiny clip, and its handling of bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from atlas.cli import main
from atlas.io import read_image, write_png, write_video


@pytest.fixture()
def clip_dir(tiny_video, tmp_path):
    return write_video(tiny_video.frames, tmp_path / "frames")


@pytest.fixture()
def bundle(clip_dir, tmp_path):
    out = tmp_path / "b.atlas"
    assert main(["fit", str(clip_dir), "-o", str(out), "--config", "fast", "--iters", "3", "--quiet"]) == 0
    return out


def test_fit_render_export_info(bundle, tmp_path, capsys):
    assert main(["render", str(bundle), "-o", str(tmp_path / "png"), "--quiet"]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 4 and read_image(pngs[0]).shape == (32, 40, 3)
    assert main(["render", str(bundle), "-o", str(tmp_path / "r.mp4"), "--quiet"]) == 0
    assert (tmp_path / "r.mp4").stat().st_size > 0
    assert main(["export", str(bundle), "-o", str(tmp_path / "exp"), "--quiet"]) == 0
    alphas = sorted((tmp_path / "exp" / "alpha").glob("*.png"))
    assert len(alphas) == 4 and read_image(alphas[0]).shape[:2] == (32, 40)
    assert {p.name for p in (tmp_path / "exp" / "atlas").iterdir()} == {"background.png", "foreground.png"}
    capsys.readouterr()
    assert main(["info", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"]["num_frames"] == 4 and info["encoding_backend"] in ("cpu", "torch")
    assert len(info["metrics"]["psnr_per_frame"]) == 4 and len(info["metrics"]["shading_gain_per_frame"]) == 4
    assert main(["info", str(bundle)]) == 0
    printed = capsys.readouterr().out
    assert "mean PSNR" in printed and "shading:   mean gain" in printed
    assert len(list((tmp_path / "exp" / "shading").glob("*.exr"))) == 4


def test_fit_of_an_exr_plate_with_nan_pixels(tiny_video, tmp_path):
    """A NaN pixel in one frame of a plate used to stop the fit with a traceback-like error."""
    from atlas.bundle import AtlasBundle
    from atlas.io import write_exr

    for i, f in enumerate(tiny_video.frames.float().numpy()):
        if i == 1:
            f = f.copy()
            f[3:5, 3:5] = np.nan
        write_exr((tmp_path / "plate").mkdir(exist_ok=True) or tmp_path / "plate" / f"plate.{i:04d}.exr", {"RGB": f})
    out = tmp_path / "nan.atlas"
    with pytest.warns(UserWarning, match=r"plate\.0001\.exr: 12 NaN or infinite"):
        assert main(["fit", str(tmp_path / "plate" / "plate.####.exr"), "-o", str(out), "--config", "fast", "--iters", "3", "--quiet"]) == 0
    assert AtlasBundle.load(out).meta.metrics["psnr_mean"] > 0


def test_fit_with_masks_does_not_advise_masks(clip_dir, tmp_path):
    """A poor fit's advice leaves out --masks when the masks were given."""
    with pytest.warns(UserWarning, match="reconstruction is poor") as caught:
        assert main(["fit", str(clip_dir), "-o", str(tmp_path / "m.atlas"), "--masks", str(_masks(tmp_path, 4)), "--config", "fast",
                     "--iters", "3", "--quiet"]) == 0
    advice = [str(w.message) for w in caught if "reconstruction is poor" in str(w.message)]
    assert advice and all("--masks" not in a and "a larger preset" in a for a in advice), advice


def test_refit_replaces_bundle_atomically(bundle, clip_dir):
    before = json.loads((bundle / "bundle.json").read_text())
    assert main(["fit", str(clip_dir), "-o", str(bundle), "--config", "fast", "--iters", "2", "--seed", "5", "--quiet"]) == 0
    after = json.loads((bundle / "bundle.json").read_text())
    assert before["seed"] == 0 and after["seed"] == 5
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]


def _masks(tmp_path, n, size=(40, 32)):
    d = tmp_path / "masks"
    d.mkdir()
    for i in range(n):
        write_png(d / f"{i:05d}.png", np.zeros(size[::-1]))
    return d


@pytest.mark.parametrize(
    "args,match",
    [
        (lambda c, t: ["fit", str(t / "nope.mp4"), "-o", str(t / "o")], "not found"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--frames", "5:2"], "greater than"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--frames", "9:"], "no frames"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--size", "big"], "WxH"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--set", "train.iters=lots"], "expects int"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--set", "train.batch=-5"], "must be >= 16"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--config", "turbo"], "unknown preset"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--masks", str(_masks(t, 3))], "3 mask images for 4 frames"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--masks", str(t / "nomasks")], "not found"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--iters", "0"], "at least 1"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--time-budget", "-1"], "positive"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--iters", "30", "--quiet", "--set", "train.lr_grid=1e9", "--set", "train.lr_mlp=1e9"],
         "the fit diverged"),
        (lambda c, t: ["fit", str(c), "-o", str(t / "o"), "--flow", "raft", "--raft-weights", str(t / "no.pth")], "RAFT weights not found"),
        (lambda c, t: ["render", str(c), "-o", str(t / "x.mp4")], "not an atlas bundle"),
        (lambda c, t: ["info", str(t / "missing")], "not an atlas bundle"),
    ],
)
def test_bad_input_exits_2_with_one_line(clip_dir, tmp_path, capsys, args, match):
    assert main(args(clip_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.mp4").exists()


def test_library_errors_are_cut_to_one_line(bundle, tmp_path, capsys):
    # ffmpeg answers an undecodable file with pages of its own output inside the exception
    junk = tmp_path / "painted.mp4"
    junk.write_bytes(b"not a movie")
    assert main(["edit", str(bundle), "-o", str(tmp_path / "e.mp4"), "--atlas", f"background={junk}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read image" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "e.mp4").exists()


def test_usage_errors_exit_2(capsys):
    for argv in (["fit"], ["frobnicate"], ["fit", "a", "-o", "b", "--flow", "magic"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "see atlas" in capsys.readouterr().err


def test_never_overwrites_user_folders(clip_dir, tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "keep.txt").write_text("data")
    assert main(["fit", str(clip_dir), "-o", str(precious), "--iters", "1", "--quiet"]) == 2
    assert (precious / "keep.txt").read_text() == "data"
    assert "not an atlas bundle" in capsys.readouterr().err


def test_device_cuda_without_gpu(clip_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["fit", str(clip_dir), "-o", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
