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
    deep = memory.estimate(40, 480, 854, fast, channel_bytes=2)  # 16-bit and EXR plates: 3 more bytes a pixel
    assert deep[0] - base == pytest.approx(3 * 40 * 480 * 854) and deep[1] > memory.estimate(40, 480, 854, fast)[1]
    assert memory.spill_bytes(40, 480, 854, 2) - memory.spill_bytes(40, 480, 854) == pytest.approx(3 * 40 * 480 * 854)


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


def test_auto_spills_a_shot_too_big_for_ram_and_checks_the_disk(monkeypatch, tmp_path):
    model = load_config("fast").model
    in_ram = memory.estimate(240, 1080, 1920, model)[0]
    spilled = memory.estimate(240, 1080, 1920, model, spill=True)[0]
    assert in_ram - spilled == pytest.approx(memory.spill_bytes(240, 1080, 1920))
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    monkeypatch.setattr(memory, "available_host_memory", lambda: int((in_ram + spilled) / 2))
    cpu = torch.device("cpu")
    disk = lambda share: type("Usage", (), {"free": int(memory.spill_bytes(240, 1080, 1920) * share)})()
    monkeypatch.setattr(memory.shutil, "disk_usage", lambda path: disk(2))  # room for the spill, whatever this machine has
    assert memory.check_fit_memory(240, 1080, 1920, model, cpu, spill="auto", spill_dir=tmp_path)
    assert not memory.check_fit_memory(24, 1080, 1920, model, cpu, spill="auto", spill_dir=tmp_path)  # fits in RAM: no spill
    with pytest.raises(AtlasInputError, match="GB of memory"):
        memory.check_fit_memory(240, 1080, 1920, model, cpu, spill="never", spill_dir=tmp_path)
    monkeypatch.setattr(memory.shutil, "disk_usage", lambda path: disk(0.5))
    with pytest.raises(AtlasInputError, match=r"need about .* GB of disk to spill beside the output \(240 frames at 1920x1080"):
        memory.check_fit_memory(240, 1080, 1920, model, cpu, spill="auto", spill_dir=tmp_path)


def _spill_dirs(folder):
    return sorted(folder.glob(".*.spill-*"))


def test_a_spilled_fit_is_the_same_fit_and_its_spill_is_removed(tiny_video, tmp_path, monkeypatch):
    import atlas
    import atlas.train

    seen = []
    real = atlas.train.initial_layout

    def layout(*args, **kwargs):  # mid-fit: the shot's arrays are files beside the output
        seen.extend(p.name for d in _spill_dirs(tmp_path) for p in d.glob("*.npy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(atlas.train, "initial_layout", layout)
    clip = write_video(tiny_video.frames, tmp_path / "frames")
    in_ram = atlas.fit(clip, tmp_path / "a", "fast", ["train.spill=never"], iters=6, quiet=True)
    assert not seen
    spilled = atlas.fit(clip, tmp_path / "b", "fast", ["train.spill=always"], iters=6, quiet=True)
    assert len(seen) == 8  # frames, two flows, two validity masks, the camera residuals and their counts, the masks
    assert not _spill_dirs(tmp_path)
    a, b = in_ram.model.state_dict(), spilled.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(in_ram.cache.tensors().values(), spilled.cache.tensors().values()))
    assert float(spilled.cache.flow_fwd.float().abs().sum()) > 0  # still readable after the spill folder is gone

    def broken(*args, **kwargs):
        raise RuntimeError("a failure mid-fit")

    monkeypatch.setattr(atlas.train, "initial_layout", broken)
    with pytest.raises(RuntimeError, match="mid-fit"):
        atlas.fit(clip, tmp_path / "c", "fast", ["train.spill=always"], iters=6, quiet=True)
    assert not _spill_dirs(tmp_path)


def test_a_resumed_spilled_fit_maps_its_checkpoint_into_the_spill(tiny_video, tmp_path, monkeypatch):
    """--resume reads the checkpoint's flows and masks a frame at a time into the spill, not
    into RAM, and resumes the same fit as one that never stopped."""
    import atlas
    import atlas.train

    clip = write_video(tiny_video.frames, tmp_path / "frames")
    args = (clip, tmp_path / "r", "fast", ["train.spill=always", "train.checkpoint_every=3"])
    whole = atlas.fit(clip, tmp_path / "whole", "fast", ["train.spill=always", "train.checkpoint_every=3"], iters=6, quiet=True)
    with monkeypatch.context() as m:  # a fit that leaves its checkpoint (of step 3) behind, as an interrupted one does
        m.setattr(atlas.train._Checkpoint, "remove", lambda self: None)
        atlas.fit(*args, iters=6, quiet=True)
    read = []
    real = atlas.train.Preprocessed.read

    def spy(*a, **kw):
        files = lambda: sum(len(list(d.glob("*.npy"))) for d in _spill_dirs(tmp_path))
        before = files()
        pre = real(*a, **kw)
        read.append(files() - before)
        return pre

    monkeypatch.setattr(atlas.train.Preprocessed, "read", spy)
    resumed = atlas.fit(*args, iters=6, quiet=True, resume=True)
    assert read == [5]  # two flows, two validity masks and the masks, each a file of the spill
    assert not _spill_dirs(tmp_path)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(whole.cache.tensors().values(), resumed.cache.tensors().values()))


def test_a_dropped_interrupt_still_stops_the_fit(tiny_video, tmp_path, monkeypatch):
    """A KeyboardInterrupt that something drops must not leave `atlas fit` running: the
    training loop sees the recorded SIGINT."""
    import signal

    import atlas.train

    real = atlas.train.initial_layout

    def layout(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:
            pass  # dropped
        return real(*args, **kwargs)

    monkeypatch.setattr(atlas.train, "initial_layout", layout)
    clip = write_video(tiny_video.frames, tmp_path / "frames")
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores SIGINT)
    try:
        rc = main(["fit", str(clip), "-o", str(tmp_path / "b"), "--config", "fast", "--iters", "50", "--set", "train.spill=always", "--quiet"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command line puts Python's handler back
    finally:
        signal.signal(signal.SIGINT, before)
    assert rc == 130
    assert not (tmp_path / "b").exists() and not _spill_dirs(tmp_path)


def test_an_ignored_interrupt_stays_ignored():
    """Under nohup or in a background job SIGINT is ignored on purpose: the command line
    does not take it over."""
    import signal

    from atlas import interrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.recorded():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_interrupted_fit_removes_its_spill(tiny_video, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    clip = write_video(tiny_video.frames, tmp_path / "frames")
    cmd = [sys.executable, "-m", "atlas", "fit", str(clip), "-o", str(tmp_path / "b"), "--config", "fast", "--iters", "1000000",
           "--set", "train.spill=always", "--set", "train.checkpoint_every=0", "--quiet"]
    # SIGINT as in a terminal, even where the tests run as a background job (which ignores it)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(d.glob("*.npy") for d in _spill_dirs(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no spill"
            time.sleep(0.05)
        time.sleep(1.0)  # into the fit
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not _spill_dirs(tmp_path)
