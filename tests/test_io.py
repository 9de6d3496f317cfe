"""Video reading/writing: every supported input kind and every bad-input case."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.errors import AtlasInputError
from atlas.io import iter_frames, probe_itemsize, read_image, read_video, to_uint8, unit_float, write_exr, write_png, write_video


def _frames(t=5, h=24, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, h, w, 3, generator=g)


def test_png_folder_roundtrip_is_exact_to_8_bits(tmp_path):
    frames = _frames()
    write_video(frames, tmp_path / "seq")
    v = read_video(tmp_path / "seq")
    assert v.frames.shape == frames.shape and v.frames.dtype == torch.uint8  # 8-bit footage is kept in 8 bits
    assert torch.equal(v.frames, (frames * 255).round().to(torch.uint8))
    assert v.frame_range == (0, 5)


def test_patterns_frame_range_and_resize(tmp_path):
    frames = _frames(t=6)
    for i, f in enumerate(frames):
        write_png(tmp_path / f"plate.{i + 10:04d}.png", f.numpy())
    (tmp_path / "plate.notes.txt").write_text("not a frame")
    a = read_video(tmp_path / "plate.%04d.png")
    b = read_video(tmp_path / "plate.####.png", frames="2:5", size="16x12")
    assert a.frames.shape == (6, 24, 32, 3)
    assert b.frames.shape == (3, 12, 16, 3) and b.frame_range == (2, 5)


def test_mp4_roundtrip_and_fps(tmp_path):
    frames = _frames(t=6, h=31, w=45)  # odd sizes must survive H.264's even-size rule
    path = write_video(frames * 0 + frames.mean(dim=(1, 2), keepdim=True), tmp_path / "clip.mp4", fps=10)
    v = read_video(path)
    assert v.frames.shape[0] == 6 and v.fps == pytest.approx(10)
    assert v.frames.shape[1:3] in {(31, 45), (32, 46)}
    assert not list(tmp_path.glob(".clip.mp4.tmp-*"))


def test_movie_range_decodes_only_up_to_its_end(tmp_path, monkeypatch):
    """A short range of a long movie must not decode (and hold) the whole movie."""
    import imageio.v3 as iio

    frames = _frames(t=6, h=16, w=16)
    levels = frames.mean(dim=(1, 2, 3))
    path = write_video(frames * 0 + levels[:, None, None, None], tmp_path / "clip.mp4", fps=10)
    full = read_video(path)
    real = iio.imiter

    def breaks_after_four(*args, **kwargs):
        for i, f in enumerate(real(*args, **kwargs)):
            if i == 4:
                raise RuntimeError("decoded past the requested range")
            yield f

    monkeypatch.setattr(iio, "imiter", breaks_after_four)
    part = read_video(path, frames="1:4")
    assert part.frame_range == (1, 4)
    assert torch.equal(part.frames, full.frames[1:4])


def test_frames_one_at_a_time_equal_the_whole_read(tmp_path):
    """iter_frames (export's pass over a plate) decodes what read_video does, range and size included."""
    frames = _frames(t=6, h=24, w=32)
    write_video(frames, tmp_path / "seq")
    movie = write_video(frames, tmp_path / "clip.mp4", fps=10)
    for path in (tmp_path / "seq", movie, frames):
        whole = unit_float(read_video(path, frames="1:5", size="16x12").frames)
        streamed = list(iter_frames(path, (1, 5), (16, 12)))
        assert len(streamed) == 4 and all(f.dtype == torch.float32 for f in streamed)
        assert torch.allclose(torch.stack(streamed), whole, atol=0.5 / 255 + 1e-6)  # whole keeps 8 bits, rounded


def test_frames_written_from_a_generator(tmp_path):
    """A generator is written frame by frame; a bad frame midway leaves nothing behind."""
    frames = _frames(t=4)
    write_video((f for f in frames), tmp_path / "gen")
    write_video(frames, tmp_path / "arr")
    assert torch.equal(read_video(tmp_path / "gen").frames, read_video(tmp_path / "arr").frames)
    mp4 = write_video((f for f in frames), tmp_path / "gen.mp4", fps=12)
    assert read_video(mp4).frames.shape == (4, 24, 32, 3)
    bad = [frames[0], frames[1], torch.rand(10, 10, 3)]
    for out in (tmp_path / "bad.mp4", tmp_path / "bad"):
        with pytest.raises(AtlasInputError, match="frame 2 is"):
            write_video(iter(bad), out)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arr", "gen", "gen.mp4"]


def test_exr_sequence(tmp_path):
    frames = _frames(t=3)
    for i, f in enumerate(frames):
        write_exr(tmp_path / f"p.{i:04d}.exr", {"RGB": f.numpy()})
    v = read_video(tmp_path / "p.####.exr")
    assert v.frames.dtype == torch.float16 and torch.equal(v.frames, frames.half())  # kept at half precision
    assert read_image(tmp_path / "p.0000.exr").shape == (24, 32, 3)


def test_nan_and_infinite_pixels_are_read_as_black_or_white_with_a_warning(tmp_path):
    """A render's bad pixels (NaN, infinity) in an EXR plate, a keyframe or frames in memory
    are read as 0 or 1, naming where they were: one NaN would make a fit's loss NaN."""
    frames = _frames(t=3)
    bad = frames.clone()
    bad[1, 2, 3], bad[1, 4, 5, 0], bad[1, 6, 7, 1] = float("nan"), float("inf"), float("-inf")
    for i, f in enumerate(bad):
        write_exr(tmp_path / f"p.{i:04d}.exr", {"RGB": f.numpy()})
    with pytest.warns(UserWarning, match=r"p\.0001\.exr: 5 NaN or infinite"):
        v = read_video(tmp_path / "p.####.exr")
    got = unit_float(v.frames)
    assert torch.isfinite(got).all() and got[1, 2, 3].tolist() == [0.0, 0.0, 0.0]
    assert got[1, 4, 5, 0] == 1.0 and got[1, 6, 7, 1] == 0.0
    assert torch.equal(got[0], frames[0].half().float())  # good frames untouched
    with pytest.warns(UserWarning, match="NaN or infinite"):
        assert np.isfinite(read_image(tmp_path / "p.0001.exr")).all()
    with pytest.warns(UserWarning, match="frame 1 in memory: 5 NaN"):
        assert torch.isfinite(unit_float(read_video(bad).frames)).all()
    with pytest.warns(UserWarning, match="frame 1 in memory"):
        assert all(torch.isfinite(f).all() for f in iter_frames(bad, (0, 3), (32, 24)))


@pytest.mark.parametrize(
    "make,kwargs,match",
    [
        (lambda p: p / "missing.mp4", {}, "not found"),
        (lambda p: _file(p / "bad.mp4", b"not a video"), {}, "cannot decode"),
        (lambda p: (p / "empty").mkdir() or p / "empty", {}, "no images"),
        (lambda p: p / "none.%04d.png", {}, "no files match"),
        (lambda p: _seq(p, 1), {}, "at least 2"),
        (lambda p: _seq(p, 4), {"frames": "10:12"}, "no frames"),
        (lambda p: _mixed(p), {}, "different sizes"),
        (lambda p: _corrupt(p), {}, "cannot read image"),
        (lambda p: _seq(p, 4), {"frames": "3:1"}, "greater than"),
        (lambda p: _seq(p, 4), {"size": "10"}, "WxH"),
        (lambda p: _file(p / "x.txt", b"hi"), {}, "unsupported input"),
        (lambda p: _file(p / "one.png", b"x"), {}, "single image"),
    ],
)
def test_bad_inputs(tmp_path, make, kwargs, match):
    with pytest.raises(AtlasInputError, match=match):
        read_video(make(tmp_path), **kwargs)


def _file(path, data):
    path.write_bytes(data)
    return path


def _seq(p, n):
    d = p / "seq"
    d.mkdir()
    for i in range(n):
        write_png(d / f"{i:05d}.png", np.full((8, 8, 3), 0.5))
    return d


def _mixed(p):
    d = _seq(p, 3)
    write_png(d / "00003.png", np.full((9, 8, 3), 0.5))
    return d


def _corrupt(p):
    d = _seq(p, 3)
    (d / "00001.png").write_bytes(b"\x89PNG broken")
    return d


def test_write_refuses_unknown_output(tmp_path):
    with pytest.raises(AtlasInputError, match="must end in"):
        write_video(_frames(), tmp_path / "out.avi")


def test_png_output_never_replaces_a_user_folder(tmp_path):
    frames = _frames(t=2)
    write_video(frames, tmp_path / "out")
    write_video(frames, tmp_path / "out")  # a previous output of ours is replaced
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(AtlasInputError, match="holds other files"):
        write_video(frames, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_frames_in_memory():
    rng = np.random.default_rng()
    u8 = rng.integers(0, 256, (5, 12, 16, 3), dtype=np.uint8)
    v = read_video(u8, frames="1:4")
    assert v.source == "<array>" and v.frame_range == (1, 4) and v.frames.dtype == torch.uint8
    assert torch.equal(v.frames, torch.from_numpy(u8[1:4]))
    as_float = torch.from_numpy(u8.astype(np.float32) / 255.0)
    assert torch.equal(read_video(as_float).frames, as_float.half())  # a float tensor in [0, 1]: float16
    assert torch.equal(unit_float(v.frames), as_float[1:4])
    u16 = read_video(u8.astype(np.uint16) * 257).frames  # 16-bit: as it is
    assert u16.dtype == torch.uint16 and torch.allclose(unit_float(u16), as_float)
    grey = read_video(u8[..., :1]).frames
    assert grey.shape == (5, 12, 16, 3) and torch.equal(grey[..., 0], grey[..., 2])
    assert read_video(np.concatenate([u8, u8[..., :1]], -1), size="10x8").frames.shape == (5, 8, 10, 3)  # RGBA, resized
    for bad, match in [(u8[0], r"\[T, H, W, C\]"), (u8[..., :2], "C in 1, 3, 4"), (u8[:1], "only 1 frame"),
                       (u8.astype(bool), "integer or float")]:
        with pytest.raises(AtlasInputError, match=match):
            read_video(bad)


def _plate16(t=3, h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (t, h, w, 3), dtype=np.uint16)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_plates_keep_their_depth(tmp_path, ext):
    """A 16-bit RGB PNG (which imageio's Pillow reads as 8-bit) and an LZW TIFF (which its
    tifffile cannot decode without an extra package) read bit for bit as uint16."""
    import cv2

    plate = _plate16()
    for i, f in enumerate(plate):
        cv2.imwrite(str(tmp_path / f"p.{i:04d}.{ext}"), f[..., ::-1])
    v = read_video(tmp_path / f"p.####.{ext}")
    assert v.frames.dtype == torch.uint16 and np.array_equal(v.frames.numpy(), plate)
    assert torch.allclose(unit_float(v.frames), torch.from_numpy(plate.astype(np.float32) / 65535.0))
    eight = read_video(tmp_path / f"p.####.{ext}", depth="8").frames  # asked for 8 bits: rounded
    assert eight.dtype == torch.uint8 and np.array_equal(eight.numpy(), to_uint8(plate))
    assert np.abs(to_uint8(plate).astype(np.float64) - plate / 257.0).max() <= 0.5
    assert probe_itemsize(tmp_path / f"p.####.{ext}") == 2 and probe_itemsize(tmp_path / f"p.####.{ext}", "8") == 1
    small = read_video(tmp_path / f"p.####.{ext}", size="16x12").frames  # resized at 16 bits
    assert small.dtype == torch.uint16 and small.shape == (3, 12, 16, 3)
    assert np.abs(small.numpy()[0, 0, 0].astype(np.float64) - plate[0, :2, :2].reshape(-1, 3).mean(0)).max() <= 1.0


def test_a_mixed_depth_sequence_takes_the_first_frames_depth(tmp_path):
    import cv2

    plate = _plate16(t=2)
    cv2.imwrite(str(tmp_path / "p.0000.png"), plate[0][..., ::-1])
    cv2.imwrite(str(tmp_path / "p.0001.png"), to_uint8(plate[1])[..., ::-1])
    v = read_video(tmp_path / "p.####.png").frames
    assert v.dtype == torch.uint16 and np.array_equal(v[1].numpy(), to_uint8(plate[1]).astype(np.uint16) * 257)
    with pytest.raises(AtlasInputError, match="frame depth must be one of source, 8"):
        read_video(tmp_path / "p.####.png", depth="16")
