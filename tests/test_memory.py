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


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_limit_of_a_parent_caps_available_memory(tmp_path, monkeypatch, version):
    """A job slot's limit set on a parent cgroup counts; reclaimable file cache is free."""
    root = tmp_path / "cgroup"
    if version == 2:
        (tmp_path / "self").write_text("0::/farm/job7/task\n")
        base, names, stat = root, ("memory.max", "memory.current"), "inactive_file"
        root.mkdir()
        (root / "cgroup.controllers").write_text("memory\n")
    else:
        (tmp_path / "self").write_text("5:cpu:/\n4:memory:/farm/job7/task\n")
        base, names, stat = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes"), "total_inactive_file"
    task, job = base / "farm" / "job7" / "task", base / "farm" / "job7"
    task.mkdir(parents=True)
    (task / names[0]).write_text("max\n" if version == 2 else f"{2**63 - 4096}\n")
    (task / names[1]).write_text("100\n")
    (job / names[0]).write_text(f"{8 * 2**30}\n")
    (job / names[1]).write_text(f"{3 * 2**30}\n")
    (job / "memory.stat").write_text(f"anon 1\n{stat} {2**30}\n")
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "self")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    assert memory._cgroup_room() == 6 * 2**30
    have = memory.available_host_memory()
    assert have is not None and have <= 6 * 2**30


def test_cli_fit_exits_2_before_any_work(tiny_video, tmp_path, monkeypatch, capsys):
    clip = write_video(tiny_video.frames, tmp_path / "frames")
    monkeypatch.setattr(memory, "available_host_memory", lambda: 10**6)
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    out = tmp_path / "b.atlas"
    assert main(["fit", str(clip), "-o", str(out), "--config", "fast", "--iters", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GB of memory" in err and "--size" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["frames"]
