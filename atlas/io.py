"""Reading and writing videos: movie files, image sequences (PNG/JPG/EXR), atomic writes.

A :class:`Video` keeps its frames in the source's own depth, compactly: 8-bit footage as
uint8, 16-bit plates as uint16, EXR and float images as float16 clipped to [0, 1] (the
fitter works on display-referred values); `frame_depth="8"` stores any of them as uint8.
:func:`unit_float` turns any of these into float32 in [0, 1].
"""
from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import AtlasInputError
from .spill import Alloc

MOVIE_EXTS = {".mp4", ".mov", ".gif", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp"}
DEFAULT_FPS = 24.0
CV2_EXTS = {".png", ".tif", ".tiff"}  # decoded by OpenCV (16-bit RGB, LZW), the rest by imageio
FRAME_DEPTHS = ("source", "8")


@dataclass
class Video:
    """Decoded frames plus where they came from."""

    frames: torch.Tensor  # [T, H, W, 3] uint8, uint16 or float16 in [0, 1] (io.unit_float converts any)
    fps: float
    source: str
    frame_range: tuple[int, int]  # [start, stop) indices into the source
    source_size: tuple[int, int] | None = None  # (width, height) before any resize; None: the frames' own

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def resized(self, size: tuple[int, int] | None, alloc: Alloc = np.empty, depth: str = "source") -> "Video":
        """The shot at `size` (width, height), area-filtered, remembering the size it had
        before, its frames stored as `depth` asks (:func:`store_dtype`); itself when that
        changes nothing."""
        frames = self.frames.numpy()
        same_size = size is None or tuple(size) == self.size
        if same_size and store_dtype(frames.dtype, depth) == frames.dtype:
            return self
        arr, _ = _fill(iter(frames), len(frames), self.source, None if same_size else tuple(size), alloc, depth)
        return Video(torch.from_numpy(arr), self.fps, self.source, self.frame_range, self.source_size or self.size)


def parse_frame_range(text: str | None) -> tuple[int, int | None] | None:
    """`A:B` (half-open, either side may be empty) -> (A, B)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise AtlasInputError(f"--frames expects A:B (e.g. 0:30), got {text!r}")
    start = int(m.group(1)) if m.group(1) else 0
    stop = int(m.group(2)) if m.group(2) else None
    if stop is not None and stop <= start:
        raise AtlasInputError(f"--frames {text}: the end must be greater than the start")
    return start, stop


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`WxH` -> (W, H)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise AtlasInputError(f"--size expects WxH with both at least 8 (e.g. 427x240), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def finite(arr: np.ndarray, what: str) -> np.ndarray:
    """A float image with its NaNs and infinities (a render's bad pixels) read as 0 (NaN,
    -inf) or 1 (+inf), with a warning naming `what`: one such pixel would otherwise turn
    a fit's loss into NaN."""
    bad = np.count_nonzero(~np.isfinite(arr))
    if not bad:
        return arr
    warnings.warn(f"{what}: {bad} NaN or infinite value(s) read as 0 (NaN, -inf) or 1 (+inf)", stacklevel=3)
    return np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)


def _finite_frames(arrays: Iterable[np.ndarray], start: int) -> Iterator[np.ndarray]:
    """Frames given in memory, the float ones through :func:`finite` (named by frame number)."""
    for i, f in enumerate(arrays):
        yield f if np.issubdtype(f.dtype, np.integer) else finite(f, f"frame {start + i} in memory")


def _unit(arr: np.ndarray) -> np.ndarray:
    """An image of any depth as float32 in [0, 1]: integers over their full range."""
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, None).astype(np.float32) / float(np.iinfo(arr.dtype).max)
    return arr.astype(np.float32, copy=False)


def read_image(path: str | Path) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1], C in {1, 3, 4}; EXR via OpenEXR."""
    return _unit(decode_image(path))


def decode_image(path: str | Path) -> np.ndarray:
    """One image (H, W, C), C in {1, 3, 4}, in its own integer depth (uint8, uint16), or as
    float32 in [0, 1] (EXR, float TIFF)."""
    path = Path(path)
    if not path.is_file():
        raise AtlasInputError(f"image not found: {path}")
    try:
        if path.suffix.lower() == ".exr":
            arr = _read_exr(path)
        elif path.suffix.lower() not in CV2_EXTS or (arr := _read_cv2(path)) is None:
            import imageio.v3 as iio

            with warnings.catch_warnings():  # imageio probes its legacy plugins on files it cannot read, with warnings
                warnings.simplefilter("ignore")
                arr = iio.imread(path)
    except AtlasInputError:
        raise
    except Exception as exc:  # decoder errors come in many types; all mean "unreadable"
        raise AtlasInputError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}") from None
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(finite(arr, str(path)), 0.0, 1.0).astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        arr = _unit(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise AtlasInputError(f"unsupported image layout {arr.shape} in {path}")
    if arr.shape[2] == 2:  # grey + alpha
        arr = np.concatenate([arr[:, :, :1]] * 3 + [arr[:, :, 1:]], axis=2)
    return arr


def _read_cv2(path: Path) -> np.ndarray | None:
    """An image as OpenCV decodes it, in its own depth (imageio's Pillow reads 16-bit RGB
    PNGs as 8-bit, and its tifffile needs an extra codec package for LZW TIFFs), in RGB(A)
    order; None where OpenCV cannot."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim == 2:
        return arr
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB) if arr.shape[2] in (3, 4) else arr


@functools.cache
def _openexr():
    """OpenEXR, its (de)compression spread over this process's cores (by default it uses one)."""
    import OpenEXR

    OpenEXR.set_global_thread_count(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return OpenEXR


def _read_exr(path: Path) -> np.ndarray:
    with _openexr().File(str(path)) as f:
        channels = f.parts[0].channels
        if "RGBA" in channels:
            return np.asarray(channels["RGBA"].pixels, dtype=np.float32)
        if "RGB" in channels:
            return np.asarray(channels["RGB"].pixels, dtype=np.float32)
        names = [n for n in ("R", "G", "B") if n in channels]
        if names:
            return np.stack([np.asarray(channels[n].pixels, dtype=np.float32) for n in names], -1)
        first = next(iter(channels.values()))
        return np.asarray(first.pixels, dtype=np.float32)


def read_exr_channels(path: str | Path) -> dict[str, np.ndarray]:
    """Every channel (or channel group, e.g. 'RGBA') of an EXR's first part, as float32."""
    with _openexr().File(str(path)) as f:
        return {name: np.asarray(ch.pixels, dtype=np.float32) for name, ch in f.parts[0].channels.items()}


def write_exr(path: str | Path, channels: dict[str, np.ndarray]) -> None:
    """Write float32 channels (each (H, W) or (H, W, C) under a name like 'RGB')."""
    OpenEXR = _openexr()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    data = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in channels.items()}
    with OpenEXR.File(header, data) as f:
        f.write(str(path))


def _rgb(image: np.ndarray) -> np.ndarray:
    """Drop alpha / broadcast grey so every frame is (H, W, 3)."""
    return image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)


def sequence_files(path: str, allow_gaps: bool = False) -> list[Path]:
    """Files of an image sequence given as a folder or a `%04d` / `####` pattern.

    A missing number in the sequence would shift every later frame against its neighbours
    (and its mask), so a gap is refused, naming the first one, unless `allow_gaps`.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise AtlasInputError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {p}")
        suffixes = {f.suffix.lower() for f in files}
        if len(suffixes) > 1:
            raise AtlasInputError(f"folder {p} mixes image types {sorted(suffixes)}; keep one type per sequence")
        found = [re.search(r"(\d+)\D*$", f.name) for f in files]
        numbers = [int(m.group(1)) for m in found if m]
        if not allow_gaps and len(numbers) == len(files) and len(set(numbers)) == len(files):  # numbered frames
            _check_gaps(str(p), sorted(zip(numbers, files)))
        return files
    name = p.name
    m = re.search(r"%0?(\d*)d", name) or re.search(r"#+", name)
    if m is None:
        raise AtlasInputError(f"input not found: {path}")
    if not p.parent.is_dir():
        raise AtlasInputError(f"folder of the image sequence not found: {p.parent}")
    token = m.group(0)
    width = len(token) if token.startswith("#") else int(m.group(1) or 1)
    digits = rf"(\d{{{width},}})" if width > 1 else r"(\d+)"
    regex = re.compile(re.escape(name[: m.start()]) + digits + re.escape(name[m.end():]) + "$")
    matches = []
    for f in p.parent.iterdir():
        mm = regex.match(f.name)
        if mm and f.is_file():
            matches.append((int(mm.group(1)), f))
    if not matches:
        raise AtlasInputError(f"no files match the sequence pattern {path}")
    matches.sort()
    if not allow_gaps:
        _check_gaps(path, matches)
    return [f for _, f in matches]


def _check_gaps(path: str, numbered: list[tuple[int, Path]]) -> None:
    """Refuse a sequence whose frame numbers skip one (see :func:`sequence_files`)."""
    for (a, fa), (b, _) in zip(numbered, numbered[1:]):
        if b == a:
            raise AtlasInputError(f"image sequence {path}: two files carry frame number {a} ({fa.name}, ...); keep one")
        if b != a + 1:
            raise AtlasInputError(f"image sequence {path} has a gap: frame {a + 1} is missing (after {fa.name}); "
                                  "fill it, or pass --allow-gaps to use the frames as they are")


def _read_movie(path: Path, start: int, stop: int | None) -> tuple[list[np.ndarray], float]:
    """Decoded frames [start, stop) as stored (usually uint8) and the fps. Frames before
    `start` are decoded and dropped, and decoding ends at `stop`: a short range of a long
    movie costs its own frames' memory, not the whole movie's."""
    import imageio.v3 as iio

    try:
        meta = iio.immeta(path, plugin=_movie_plugin(path))
        fps = float(meta.get("fps") or 0.0)
        if not fps and meta.get("duration"):
            fps = 1000.0 / float(meta["duration"])  # GIF durations are in ms
    except Exception as exc:  # ffmpeg/pillow raise many types for corrupt files
        raise _undecodable(path, exc) from None
    return list(_movie_frames(path, start, stop)), fps or DEFAULT_FPS


def _movie_plugin(path: Path) -> str:
    return "pillow" if path.suffix.lower() == ".gif" else "FFMPEG"


def _undecodable(path: Path, exc: Exception) -> AtlasInputError:
    return AtlasInputError(f"cannot decode video {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _movie_frames(path: Path, start: int, stop: int | None) -> Iterator[np.ndarray]:
    """A movie's frames [start, stop), decoded one at a time."""
    import imageio.v3 as iio

    try:
        for i, f in enumerate(iio.imiter(path, plugin=_movie_plugin(path))):
            if i >= start:
                yield np.asarray(f)
            if stop is not None and i + 1 >= stop:
                break
    except Exception as exc:  # ffmpeg/pillow raise many types for corrupt files
        raise _undecodable(path, exc) from None


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A decoded frame (grey, RGB or RGBA) as (H, W, 3): uint8 and uint16 as they are, any
    other depth as float32 in [0, 1]."""
    if image.dtype not in (np.uint8, np.uint16):
        image = _unit(image)
    if image.ndim == 2:
        image = image[:, :, None]
    return _rgb(image)


def store_dtype(decoded: np.dtype, depth: str = "source") -> np.dtype:
    """The dtype a :class:`Video` keeps frames decoded as `decoded` in: uint8 for 8-bit
    footage or `depth="8"`, uint16 for 16-bit plates, float16 for any other depth."""
    if depth not in FRAME_DEPTHS:
        raise AtlasInputError(f"frame depth must be one of {', '.join(FRAME_DEPTHS)}, got {depth!r}")
    if depth == "8" or decoded == np.uint8:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if decoded == np.uint16 else np.dtype(np.float16)


def _to_store(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An image (uint8, uint16 or float in [0, 1]) in the store's `dtype`, rounded and clipped."""
    if image.dtype == dtype:
        return image
    if dtype == np.uint8:
        return to_uint8(image)
    unit = np.clip(_unit(image), 0.0, 1.0)
    return (unit * 65535.0 + 0.5).astype(np.uint16) if dtype == np.uint16 else unit.astype(np.float16)


def unit_float(frames: torch.Tensor) -> torch.Tensor:
    """Frames (or pixels) as stored in a :class:`Video` -> float32 in [0, 1]."""
    if frames.dtype in (torch.uint8, torch.uint16):
        return frames.float() / (255.0 if frames.dtype == torch.uint8 else 65535.0)
    return frames.float()


def _fill(frames: Iterator[np.ndarray], count: int, spath: str, size: tuple[int, int] | None,
          alloc: Alloc = np.empty, depth: str = "source") -> tuple[np.ndarray, tuple[int, int]]:
    """Stack `count` frames into one [T, H, W, 3] array, allocated once and filled frame by
    frame (no list of frames, no stacked copy); and the frames' (width, height) before
    resizing. The first frame's depth sets the array's (:func:`store_dtype`): 3 bytes a
    pixel for 8-bit footage, 6 for any other (the fit's largest array)."""
    arr: np.ndarray | None = None
    for i, im in enumerate(frames):
        im = _as_rgb(im)
        if arr is None:
            first = im.shape[:2]
            out_hw = (size[1], size[0]) if size is not None else first
            arr = alloc((count, *out_hw, 3), store_dtype(im.dtype, depth))
        elif im.shape[:2] != first:
            raise AtlasInputError(f"{spath}: frames have different sizes: frame {i} is {im.shape[1]}x{im.shape[0]}, the first "
                                  f"{first[1]}x{first[0]}; all frames must match")
        arr[i] = _to_store(_resized(im, size), arr.dtype)
    assert arr is not None
    return arr, (first[1], first[0])


def _resized(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """An image resized to `size` (W, H) by area averaging (unchanged without a size or at it)."""
    import cv2

    if size is None or image.shape[1::-1] == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


ARRAY_SOURCE = "<array>"


def read_video(
    path: str | Path | np.ndarray | torch.Tensor,
    frames: tuple[int, int | None] | str | None = None,
    size: tuple[int, int] | str | None = None,
    min_frames: int = 2,
    allow_gaps: bool = False,
    alloc: Alloc = np.empty,
    depth: str = "source",
) -> Video:
    """Read a movie file or image sequence, optionally a frame range and resized to (W, H).

    `path` may also be frames already in memory: an array or tensor [T, H, W, C] (C = 1,
    3 or 4), integer (full range) or float in [0, 1]. Its source is recorded as "<array>",
    so an edit renders over the reconstruction unless given the frames again (`frames=`).

    Only the frames in the range are kept, and the result is filled in place, so reading
    costs about the result's own memory: 3 bytes per pixel for 8-bit footage (kept as
    uint8) or `depth="8"`, 6 for any other depth (uint16 for 16-bit plates, float16 for
    EXR and float images, clipped to [0, 1]). A range that ends past the
    clip is cut to it, with a warning; see :func:`sequence_files` for `allow_gaps`.
    `alloc(shape, dtype)` makes the frames' array (atlas.spill: a memory-mapped file).

    Example:
        >>> video = read_video("plate.%04d.png", frames="0:30", size="427x240")
    """
    if isinstance(frames, str):
        frames = parse_frame_range(frames)
    if isinstance(size, str):
        size = parse_size(size)
    start, stop = frames or (0, None)
    fps = DEFAULT_FPS
    if isinstance(path, (np.ndarray, torch.Tensor)):
        spath = ARRAY_SOURCE
        given = path.detach().cpu().numpy() if isinstance(path, torch.Tensor) else path
        if given.ndim != 4 or given.shape[3] not in (1, 3, 4):
            raise AtlasInputError(f"frames in memory must be [T, H, W, C] with C in 1, 3, 4; got shape {tuple(given.shape)}")
        if not (np.issubdtype(given.dtype, np.integer) or np.issubdtype(given.dtype, np.floating)):
            raise AtlasInputError(f"frames in memory must be integer or float, got {given.dtype}")
        count, images = len(given[start:stop]), _finite_frames(given[start:stop], start)
    else:
        spath = str(path)
        count, images, fps = _open_frames(Path(spath), start, stop, allow_gaps)
    if stop is not None and 0 < count < stop - start:
        warnings.warn(f"--frames {start}:{stop}: {spath} ends at frame {start + count}; using {start}:{start + count}", stacklevel=2)
    if count == 0:
        raise AtlasInputError(f"{spath}: no frames" + (f" in range {start}:{stop if stop is not None else ''}" if frames else ""))
    if count < min_frames:
        raise AtlasInputError(f"{spath}: only {count} frame(s); fitting needs at least {min_frames}")
    arr, native = _fill(images, count, spath, size, alloc, depth)
    return Video(torch.from_numpy(arr), fps, spath, (start, start + count), native)


def iter_frames(path: str | Path | np.ndarray | torch.Tensor, frames: tuple[int, int | None], size: tuple[int, int]
                ) -> Iterator[torch.Tensor]:
    """The frames [start, stop) of a movie, image sequence or array [T, H, W, C] decoded
    one at a time, each float32 [H, W, 3] in [0, 1] at `size` (W, H): one pass over a long
    plate at its full resolution without holding it in memory."""
    start, stop = frames
    if isinstance(path, (np.ndarray, torch.Tensor)):
        images = _finite_frames((f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f for f in path[start:stop]), start)
    elif (p := Path(path)).is_file() and p.suffix.lower() in MOVIE_EXTS:
        images = _movie_frames(p, start, stop)
    else:
        images = _open_frames(p, start, stop)[1]
    for im in images:
        yield torch.from_numpy(_unit(_resized(_as_rgb(im), size)))


def probe_video(path: str | Path | np.ndarray | torch.Tensor, frames: tuple[int, int | None] | None = None,
                size: tuple[int, int] | None = None, allow_gaps: bool = False) -> tuple[int, int, int]:
    """(frames, width, height) that :func:`read_video` would return, from the headers
    alone (a movie's metadata, a sequence's file count and first image), so a shot too
    large for memory is refused before anything is decoded. A movie whose length its
    header does not give counts as the range asked for (or 1 frame)."""
    start, stop = frames or (0, None)
    if isinstance(path, (np.ndarray, torch.Tensor)):
        count, (h, w) = len(range(*slice(start, stop).indices(path.shape[0]))), tuple(path.shape[1:3])
    else:
        p = Path(path)
        if p.is_file() and p.suffix.lower() in MOVIE_EXTS:
            count, w, h = _probe_movie(p, start, stop)
        elif _is_sequence(p):
            files = sequence_files(str(p), allow_gaps)
            count = len(files[start:stop])
            h, w = _image_size(files[0])
        else:
            return 0, 0, 0  # read_video says what is wrong with it
    if size is not None:
        w, h = size
    return count, int(w), int(h)


def probe_itemsize(path: str | Path | np.ndarray | torch.Tensor, depth: str = "source", allow_gaps: bool = False) -> int:
    """Bytes per channel of the frames :func:`read_video` would keep (1 or 2), from the
    first image of a sequence (movies decode to 8 bits), for the memory check."""
    if isinstance(path, torch.Tensor):
        path = path[:1].detach().cpu().numpy()
    if isinstance(path, np.ndarray):
        decoded = path.dtype if path.dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
    else:
        p = Path(path)
        decoded = _as_rgb(decode_image(sequence_files(str(p), allow_gaps)[0])).dtype if _is_sequence(p) else np.dtype(np.uint8)
    return store_dtype(decoded, depth).itemsize


def _is_sequence(p: Path) -> bool:
    """Whether `p` names an image sequence (a folder, or a pattern with % or #), not a file."""
    return p.is_dir() or ((p.exists() or "%" in p.name or "#" in p.name) and not p.is_file())


def _probe_movie(p: Path, start: int, stop: int | None) -> tuple[int, int, int]:
    import imageio.v3 as iio

    plugin = "pillow" if p.suffix.lower() == ".gif" else "FFMPEG"
    try:
        meta = iio.immeta(p, plugin=plugin)
    except Exception:  # undecodable: read_video reports it
        return 0, 0, 0
    w, h = meta.get("size") or meta.get("shape", (0, 0))[1::-1] or (0, 0)
    total = meta.get("nframes")
    if not isinstance(total, (int, float)) or not np.isfinite(total):
        total = round(float(meta.get("duration") or 0) * float(meta.get("fps") or 0)) or None
    known = [n for n in (None if total is None else int(total) - start, None if stop is None else stop - start) if n is not None]
    return max(min(known), 0) if known else 1, int(w), int(h)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image, from its header where the format allows."""
    if path.suffix.lower() != ".exr":
        try:
            from PIL import Image

            with Image.open(path) as im:
                return im.height, im.width
        except Exception:  # PIL cannot parse it: decode it (read_image has the error message)
            pass
    return read_image(path).shape[:2]


def _open_frames(p: Path, start: int, stop: int | None, allow_gaps: bool = False) -> tuple[int, Iterator[np.ndarray], float]:
    """(frame count, the frames [start, stop) decoded one by one, fps) of a movie or image sequence."""
    spath = str(p)
    fps = DEFAULT_FPS
    if p.is_file():
        if p.suffix.lower() in MOVIE_EXTS:
            decoded, fps = _read_movie(p, start, stop)
            count, images = len(decoded), iter(decoded)
        elif p.suffix.lower() in IMAGE_EXTS:
            raise AtlasInputError(f"{p} is a single image; give the folder or a pattern like plate.%04d.png")
        else:
            raise AtlasInputError(f"unsupported input type {p.suffix!r}; use a movie ({', '.join(sorted(MOVIE_EXTS))}) or an image sequence")
    elif p.exists() or "%" in p.name or "#" in p.name:
        files = sequence_files(spath, allow_gaps)[start:stop]
        count, images = len(files), (decode_image(f) for f in files)
    else:
        raise AtlasInputError(f"input not found: {spath}")
    return count, images, fps


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames or an image (uint8, uint16, or float in [0, 1]) as uint8, rounded."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(_unit(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def output_path(text: str | Path, flag: str = "-o") -> Path:
    """The path an output will really be written to: symlinks followed (so a link is never
    replaced by a folder, and the checks below see the real target). '', '.' and '..'
    name no new output and are refused."""
    raw = str(text)
    if raw.strip() in ("", ".", "..") or Path(raw).name in ("", ".", ".."):
        raise AtlasInputError(f"{flag} {raw!r}: give the name of a new file or folder to write")
    return Path(os.path.realpath(raw))


def _protected(path: str | Path) -> Path:
    """What writing must never touch for an input: the file or folder itself (symlinks
    followed), or the folder of a `%04d` / `####` sequence pattern."""
    p = Path(path)
    if not p.exists() and ("%" in p.name or "#" in p.name):
        p = p.parent
    return Path(os.path.realpath(p))


def check_not_input(out: Path, inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse an output that is, holds, or lies inside one of `inputs`, (label, path) pairs:
    the command's own inputs, the bundle, the footage the bundle was fitted from. Writing
    there would replace or pollute them. Symlinks are followed on both sides."""
    out = Path(os.path.realpath(out))
    for label, item in inputs:
        if item is None or str(item) in ("", ARRAY_SOURCE):
            continue
        p = _protected(item)
        if not p.exists():  # nothing there to destroy (e.g. a model's hub id)
            continue
        if out == p or p.is_relative_to(out) or out.is_relative_to(p):
            relation = "is" if out == p else "holds" if p.is_relative_to(out) else "lies inside"
            raise AtlasInputError(f"output {out} {relation} {label} ({item}); write somewhere else")


@contextmanager
def output_lock(out: Path, command: str = "atlas") -> Iterator[None]:
    """Hold an exclusive lock on `out` for a command's whole run, so two runs never write
    the same output (or its checkpoint) at once: the second is refused at once.

    The lock is a hidden file beside `out`, removed when the run ends.
    """
    import fcntl

    lock = out.parent / f".{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AtlasInputError(f"another {command} is writing {out} right now; wait for it or choose another output") from None
        try:  # the lock file may have been removed by the previous holder between open and flock
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        finally:
            os.close(fd)


def check_writable(out: Path) -> None:
    """Fail before any slow work when the output's folder cannot be written (a read-only
    volume or folder), by making and removing a temporary folder in the nearest existing
    ancestor."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise AtlasInputError(f"cannot write {out}: {folder} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".atlas-write-test-", dir=folder))
    except OSError as exc:
        raise AtlasInputError(f"cannot write {out}: {folder} is not writable ({exc.strerror})") from None


def _share(tree: Path) -> None:
    """Give every file and folder of a new output the modes a new file gets under the
    user's umask (tempfile and safetensors make them private), so a bundle copied to a
    shared volume can be read by other users as any other file there."""
    umask = os.umask(0)
    os.umask(umask)
    items = [tree, *tree.rglob("*")] if tree.is_dir() else [tree]
    for item in items:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_path(final: str | Path, is_dir: bool) -> Iterator[Path]:
    """Yield a temp path next to `final`; move it into place only if the block succeeds.

    An existing `final` is replaced only at the very end, so readers never see a
    half-written result and a failure leaves the old one untouched (and no temporary
    files). `final` should be resolved (:func:`output_path`): a symlink is replaced as a
    link, not followed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    target = tmp if is_dir else tmp / final.name
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        yield target
        _share(target)
        if final.exists() or final.is_symlink():
            os.replace(final, old)
            try:
                os.replace(target, final)
            except OSError:
                os.replace(old, final)  # put the previous output back
                raise
        else:
            os.replace(target, final)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists() or leftover.is_symlink():
                leftover.unlink()


def check_replaceable(folder: Path, pattern: str) -> None:
    """Refuse to replace an existing folder holding anything but files named like `pattern`
    (a previous output of ours): a user's folder is never deleted."""
    if folder.is_file():
        raise AtlasInputError(f"{folder} is a file; give a folder name or a .mp4 path")
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir() if not re.fullmatch(pattern, p.name)]
        if foreign:
            raise AtlasInputError(f"{folder} exists and holds other files ({foreign[0]}, ...); choose another output")


def write_png(path: str | Path, image: np.ndarray | torch.Tensor) -> None:
    """Write an (H, W[, C]) float image in [0, 1] as 8-bit PNG."""
    import imageio.v3 as iio

    iio.imwrite(path, to_uint8(image))


def _frames_u8(frames: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]) -> Iterator[np.ndarray]:
    """Each frame as uint8 (H, W, 3), converted one at a time; all must share one size."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and (frames.ndim != 4 or frames.shape[-1] != 3):
        raise AtlasInputError(f"write_video expects (T, H, W, 3) frames, got {tuple(frames.shape)}")
    first = None
    for i, frame in enumerate(frames):
        f = to_uint8(frame)
        if f.ndim != 3 or f.shape[-1] != 3 or (first is not None and f.shape != first):
            raise AtlasInputError(f"write_video: frame {i} is {tuple(f.shape)}; every frame must be (H, W, 3) of one size")
        first = f.shape
        yield f


def write_video(frames: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray], out: str | Path, fps: float = DEFAULT_FPS) -> Path:
    """Write frames in [0, 1] to an .mp4/.mov (H.264) or a folder of PNGs `00000.png...`.

    `frames` is (T, H, W, 3), or any iterable of (H, W, 3) frames: a generator is written
    as it is produced, so a long render never holds the whole video.
    """
    out = Path(out)
    if out.suffix.lower() in {".mp4", ".mov", ".m4v"}:
        import imageio_ffmpeg

        with atomic_path(out, is_dir=False) as tmp:
            data = _frames_u8(frames)
            first = next(data, None)
            if first is None:
                raise AtlasInputError("write_video: no frames to write")
            h, w = first.shape[:2]
            writer = imageio_ffmpeg.write_frames(
                str(tmp), (w, h), fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", quality=9, macro_block_size=1,
                output_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
            )
            writer.send(None)
            try:
                for frame in itertools.chain([first], data):
                    writer.send(np.ascontiguousarray(frame))
            finally:
                writer.close()
    elif out.suffix == "":
        check_replaceable(out, r"\d{5}\.png")
        with atomic_path(out, is_dir=True) as tmp:
            write_pngs(tmp, _frames_u8(frames))
    else:
        raise AtlasInputError(f"output {out} must end in .mp4/.mov or be a folder name without extension")
    return out


def write_pngs(folder: Path, images: Iterable[np.ndarray | torch.Tensor]) -> None:
    """Write numbered 8-bit PNGs `00000.png...` into an existing folder."""
    for i, im in enumerate(images):
        write_png(folder / f"{i:05d}.png", im)
