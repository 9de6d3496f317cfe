"""Will a fit fit in memory? An estimate checked before the slow work starts.

A fit holds the frames, both flows and masks for the whole optimisation (about 14 bytes a
pixel, in their compact dtypes), then evaluates every frame (keeping up to 1 GB of the
results for the bundle), so its peak memory grows with the shot's pixel count (frames x
width x height). Past the machine's memory the kernel kills the process without a
message, after minutes of preprocessing; this check refuses up front instead, with the
frame count and size that would fit.

A shot too large for RAM can spill those arrays to memory-mapped files beside the output
(atlas.spill, `train.spill`): RAM then holds only what does not grow with the shot (the
tables, the capped frame-map cache, the atlases) and the disk must hold the spill.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from .bake import MAX_TEXELS
from .bundle import MAP_CACHE_BYTES
from .config import ModelConfig, TrainConfig
from .encoding import grid_resolutions, level_rows
from .errors import AtlasInputError
from .model import ALPHA_BASE, COLOUR_BASE, RESIDUAL_BASE, FrameGeometry, frame_grid_finest
from .spill import SPILLED_BYTES_PER_PIXEL

# Host memory of `atlas fit` per pixel of the shot, counted from what it holds: the frames
# (3 bytes as uint8; FRAME_CHANNEL_BYTES more per byte of depth above 8 bits), both flows
# (8, float16), their validity (2) and the masks (1). While preprocessing, the camera
# residuals (2, float16) and their counts (1) are held besides; training adds the tables four times over
# (values, gradients, two Adam moments); after training, every frame
# is evaluated for the PSNR, the atlases and the quality statistics, keeping up to
# MAP_CACHE_BYTES of frame maps for the bundle, and saving the cache copies the masks (1);
# measured after training (bench/plate_bench.py, 1920x1080x120), a little more than
# counted, hence 20. A spilled shot's arrays (SPILLED_BYTES_PER_PIXEL) are not in RAM.
# bench/memory_bench.py measures small shots.
HOST_BYTES_PER_PIXEL_TRAINING = 17.0
HOST_BYTES_PER_PIXEL = 20.0
HOST_BASE_BYTES = 0.8e9  # the interpreter, torch, OpenCV
FRAME_CHANNEL_BYTES = 3.0  # the frames' share of the counts above, per byte of each channel
# per texel of each layer's atlas after training: the baked RGBA texture (16 bytes, float32),
# the quality statistics' sums and counts (12) and the coverage (1); an atlas is taken as
# ATLAS_FRAMES frames' area (up to the texture cap), as for the colour tables
ATLAS_BYTES_PER_TEXEL = 29.0
ATLAS_FRAMES = 4
# a frame's maps: reconstruction (12 bytes per pixel), and per layer uv (8) and weight (4)
MAP_BYTES_PER_PIXEL = 12.0
MAP_BYTES_PER_PIXEL_PER_LAYER = 12.0
TABLE_COPIES_TRAINING = 4
ACTIVATION_COPIES = 3  # an activation, its saved copy for backward, its gradient
DEFAULT_BATCH = TrainConfig.batch
# On a GPU the step reads the frames (3 bytes per pixel as uint8, 6 as float16 for deeper
# plates), forward flow (4, float16), its validity (1) and masks (1) from device memory:
# counted from those dtypes, not measured on a GPU.
DEVICE_BYTES_PER_PIXEL = 9.0
DEVICE_BASE_BYTES = 1.0e9  # CUDA context, kernels, activations
SKIP_ENV = "ATLAS_SKIP_MEMORY_CHECK"
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room() -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroup and its parents
    (a container, a render-farm job slot, a systemd scope), counting reclaimable file cache
    as free; None when no limit is set. cgroup v2 and v1."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    room = None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            root, files = CGROUP_ROOT, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            root, files = CGROUP_ROOT / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = root / rel.lstrip("/")
        while True:
            limit, usage = _read_int(folder / files[0]), _read_int(folder / files[1])
            if limit is not None and usage is not None and limit < 1 << 60:  # "max" or a huge number: no limit
                left = limit - usage + _stat(folder / "memory.stat", files[2])
                room = left if room is None else min(room, left)
            if folder == root:
                break
            folder = folder.parent
    return room


def available_host_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by any cgroup limit.
    None where neither is known (not Linux)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def _grid_rows(n_dims: int, n_levels: int, base: float | tuple[float, ...], finest: tuple[float, ...], log2_table_size: int) -> int:
    finest = tuple(max(f, 1.0) for f in finest)  # the memory advice probes sizes down to nothing
    return sum(level_rows(grid_resolutions(n_dims, n_levels, base, finest), log2_table_size))


def table_bytes(num_frames: int, height: int, width: int, model: ModelConfig) -> int:
    """Bytes of the model's hash tables for a shot, sized as LayeredAtlas sizes them. The
    colour atlases' extent is only known after preprocessing; it is taken as 4 frames'
    area (car-shadow's atlases cover 5.3 frames, blackswan's 1.6)."""
    layers = 1 + model.num_foregrounds
    geom, log2 = FrameGeometry(num_frames, height, width), model.log2_table_size
    colour = _grid_rows(2, model.colour_levels, COLOUR_BASE, (2 * width * model.colour_density, 2 * height * model.colour_density), log2)
    residual = _grid_rows(3, model.residual_levels, RESIDUAL_BASE, frame_grid_finest(geom, model.residual_finest_frac), log2)
    alpha = _grid_rows(3, model.alpha_levels, ALPHA_BASE, frame_grid_finest(geom, model.alpha_finest_frac), log2)
    rows = layers * (colour + residual) + (alpha if model.num_foregrounds else 0)
    return rows * 2 * 4  # 2 float32 features per row


def network_bytes(model: ModelConfig, batch: int) -> int:
    """Bytes of the small MLPs while training (weights, gradients and two Adam moments) and
    of one step's activations (each kept for the backward pass, and its gradient): what a
    very wide `model.hidden` or large `train.batch` costs, apart from the tables."""
    layers, hid, n_col = 1 + model.num_foregrounds, model.hidden, model.colour_hidden_layers
    feats = {"residual": 2 * model.residual_levels, "colour": 2 * model.colour_levels, "alpha": 2 * model.alpha_levels}
    weights = layers * (feats["residual"] * hid + 2 * hid + feats["colour"] * hid + max(n_col - 1, 0) * hid * hid + 3 * hid)
    if model.num_foregrounds:
        weights += feats["alpha"] * hid + hid * model.num_foregrounds
    # points per step: the batch and its flow targets (1.5 B) through the mappings and the
    # opacity, the batch (B) through the colours, the rigidity stencil (0.75 B) through each
    # residual and the carried pixels (0.25 B) through each foreground's
    per_point = layers * (2.25 * (feats["residual"] + hid) + feats["colour"] + hid * max(n_col, 1))
    if model.num_foregrounds:
        per_point += 1.5 * (feats["alpha"] + hid) + 0.25 * model.num_foregrounds * (feats["residual"] + hid)
    return int(4 * (TABLE_COPIES_TRAINING * weights + ACTIVATION_COPIES * batch * per_point))


def _deeper_frames(channel_bytes: int) -> float:
    """Bytes per pixel that frames of `channel_bytes` per channel add to the 8-bit frames
    the per-pixel counts hold."""
    return FRAME_CHANNEL_BYTES * (channel_bytes - 1)


def estimate(num_frames: int, height: int, width: int, model: ModelConfig, map_cache: int = MAP_CACHE_BYTES,
             batch: int = DEFAULT_BATCH, spill: bool = False, channel_bytes: int = 1) -> tuple[float, float]:
    """(host bytes, GPU bytes when fitting on a GPU) at the fit's peak. `map_cache` caps
    the frame maps the fit keeps for the bundle; `batch` is train.batch; with `spill` the
    shot's arrays are on disk (:func:`spill_bytes`), not in RAM; `channel_bytes` is the
    stored frames' (io.probe_itemsize: 2 for 16-bit and EXR plates)."""
    px = num_frames * height * width
    deeper = px * _deeper_frames(channel_bytes)
    spilled = spill_bytes(num_frames, height, width, channel_bytes) if spill else 0.0
    layers = 1 + model.num_foregrounds
    tables = table_bytes(num_frames, height, width, model)
    training = (TABLE_COPIES_TRAINING * tables + max(px * HOST_BYTES_PER_PIXEL_TRAINING + deeper - spilled, 0.0)
                + network_bytes(model, batch))
    maps = min(map_cache, px * (MAP_BYTES_PER_PIXEL + MAP_BYTES_PER_PIXEL_PER_LAYER * layers))
    atlases = layers * min(ATLAS_FRAMES * height * width, MAX_TEXELS) * ATLAS_BYTES_PER_TEXEL
    after = tables + px * HOST_BYTES_PER_PIXEL + deeper - spilled + maps + atlases
    host = HOST_BASE_BYTES + max(training, after)
    gpu = (DEVICE_BASE_BYTES + TABLE_COPIES_TRAINING * tables + px * DEVICE_BYTES_PER_PIXEL + deeper
           + network_bytes(model, batch))
    return host, gpu


def _advice(fits: Callable[[int, int, int], bool], num_frames: int, height: int, width: int) -> str:
    """What would fit: the most frames, and the largest size at the same aspect, for which
    `fits(frames, height, width)` holds (both found by bisection on the estimate)."""
    lo, hi = 0, num_frames  # fits(lo) holds (0 frames: vacuously); fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid, height, width) else (lo, mid)
    frames = lo
    small, big = 0.0, 1.0
    for _ in range(20):
        mid = (small + big) / 2
        small, big = (mid, big) if fits(num_frames, int(height * mid), int(width * mid)) else (small, mid)
    w, h = max(int(width * small) // 2 * 2, 8), max(int(height * small) // 2 * 2, 8)
    fewer = f"at most {frames} frames (--frames) or " if frames >= 2 else ""
    return f"fit {fewer}a smaller size (--size {w}x{h}), or set {SKIP_ENV}=1 to try anyway"


def spill_bytes(num_frames: int, height: int, width: int, channel_bytes: int = 1) -> float:
    """Disk bytes of a spilled shot's arrays (atlas.spill), frames of `channel_bytes` per channel."""
    return num_frames * height * width * (SPILLED_BYTES_PER_PIXEL + _deeper_frames(channel_bytes))


def check_fit_memory(num_frames: int, height: int, width: int, model: ModelConfig, device: torch.device,
                     batch: int = DEFAULT_BATCH, spill: str = "never", spill_dir: Path | None = None,
                     channel_bytes: int = 1) -> bool:
    """Whether to spill the shot's arrays to disk (`spill`: auto, always or never; the
    spill goes in `spill_dir`); raises AtlasInputError when the fit would clearly not fit
    in host memory (and, spilling, on the disk) or in GPU memory. `channel_bytes`: the
    stored frames' bytes per channel (io.probe_itemsize)."""
    shot = f"{num_frames} frames at {width}x{height}, {1 + model.num_foregrounds} layers"
    if os.environ.get(SKIP_ENV):
        return spill == "always"

    def est(t: int, h: int, w: int, spilled: bool = False) -> tuple[float, float]:
        return estimate(t, h, w, model, batch=batch, spill=spilled, channel_bytes=channel_bytes)

    have = available_host_memory()
    host = est(num_frames, height, width)[0]
    spilling = spill == "always" or (spill == "auto" and have is not None and host > have)
    if spilling:
        host = est(num_frames, height, width, True)[0]
        need, free = spill_bytes(num_frames, height, width, channel_bytes), shutil.disk_usage(spill_dir or Path.cwd()).free
        if need > free:
            raise AtlasInputError(f"this shot's arrays need about {need / 1e9:.1f} GB of disk to spill beside the output ({shot}) "
                                  f"but {free / 1e9:.1f} GB is free; free some, or fit fewer frames (--frames) or a smaller --size")
    if have is not None and host > have:
        advice = _advice(lambda t, h, w: est(t, h, w, spilling)[0] <= have, num_frames, height, width)
        raise AtlasInputError(f"this shot needs about {host / 1e9:.1f} GB of memory to fit ({shot}) but {have / 1e9:.1f} GB is "
                              f"available; {advice}")
    if device.type == "cuda":
        gpu = est(num_frames, height, width)[1]
        free = torch.cuda.mem_get_info(device)[0]
        if gpu > free:
            advice = _advice(lambda t, h, w: est(t, h, w)[1] <= free, num_frames, height, width)
            raise AtlasInputError(f"this shot needs about {gpu / 1e9:.1f} GB of GPU memory to fit ({shot}) but {free / 1e9:.1f} GB "
                                  f"is free; {advice}")
    return spilling
