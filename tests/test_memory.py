"""The memory check before a fit: refuses shots that cannot fit, with advice that does fit."""
from __future__ import annotations

import pytest
import torch

from atlas import memory
from atlas.cli import main
from atlas.config import load_config
from atlas.errors import AtlasInputError
from atlas.io import write_video


def _parse_advice(message: str) -> tuple[int, tuple[int, int]]:
    frames = int(message.split("at most ")[1].split(" frames")[0])
    w, h = message.split("--size ")[1].split(")")[0].split("x")
    return frames, (int(w), int(h))


def test_refuses_a_shot_too_big_and_its_advice_fits(monkeypatch):
    model = load_config("default").model
    need, _ = memory.estimate(300, 1080, 1920, model)
    have = int(need * 0.4)
    monkeypatch.setattr(memory, "available_host_memory", lambda: have)
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    with pytest.raises(AtlasInputError, match=r"needs about .* GB of memory to fit \(300 frames at 1920x1080, 2 layers\)") as err:
        memory.check_fit_memory(300, 1080, 1920, model, torch.device("cpu"))
    frames, (w, h) = _parse_advice(str(err.value))
    assert 2 <= frames < 300 and w < 1920 and h < 1080
    assert memory.estimate(frames, 1080, 1920, model)[0] <= have
    assert memory.estimate(300, h, w, model)[0] <= have
    # a shot that fits passes, and the environment variable skips the check
    memory.check_fit_memory(frames, 1080, 1920, model, torch.device("cpu"))
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_fit_memory(300, 1080, 1920, model, torch.device("cpu"))


def test_estimate_grows_with_pixels_layers_and_tables():
    fast, default = load_config("fast").model, load_config("default").model
    one_layer = load_config("fast", ["model.num_foregrounds=0"]).model
    base = memory.estimate(40, 480, 854, fast)[0]
    assert memory.estimate(80, 480, 854, fast)[0] > base
    assert memory.estimate(40, 480, 854, one_layer)[0] < base
    assert memory.estimate(40, 480, 854, default)[0] > base


def test_available_memory_is_known_on_linux():
    have = memory.available_host_memory()
    if have is None:
        pytest.skip("no /proc/meminfo here")
    assert 0 < have < 1 << 50


def test_cli_fit_exits_2_before_any_work(tiny_video, tmp_path, monkeypatch, capsys):
    clip = write_video(tiny_video.frames, tmp_path / "frames")
    monkeypatch.setattr(memory, "available_host_memory", lambda: 10**6)
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    out = tmp_path / "b.atlas"
    assert main(["fit", str(clip), "-o", str(out), "--config", "fast", "--iters", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GB of memory" in err and "--size" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["frames"]
