"""`bundle.json`, typed: built once when a fit ends, validated on every load.

A bundle is input too (copied between machines, edited by hand, or made to do harm), so
every field is checked for type and range when it is read, and anything else is one
"bundle is corrupt" error. Layer names become file names (`atlas/<layer>.png`, an
export's `uv/<layer>/`), so they are restricted to letters, digits and underscores.

    format_version   int            bundle layout (see atlas.bundle.FORMAT_VERSION)
    tool_version     str            the atlas that wrote it
    source           path, fps, frames [start, stop), num_frames, size [W, H], source_size [W, H] before --size
    layers           [{name, atlas_size [w, h], uv_range {lo [2], hi [2]}}]
    config           the FitConfig used (atlas.config)
    metrics          psnr_per_frame [T], psnr_mean, shading_gain_per_frame [T] (None without
                     shading), iterations, per-layer mapping quality, ...
    timings          seconds per stage
    encoding_backend, device, seed, preprocess {flow, masks}
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AtlasInputError

LAYER_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_SIDE = 1 << 17  # frame or atlas side in pixels
MAX_FRAMES = 1 << 20


class BundleCorrupt(AtlasInputError):
    """bundle.json (or another bundle file) does not hold what atlas wrote."""


def _need(data: Any, key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise BundleCorrupt(f"{where}{key} is missing")
    value = data[key]
    bad_bool = isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))
    if not isinstance(value, kinds) or bad_bool:
        raise BundleCorrupt(f"{where}{key} has the wrong type ({type(value).__name__})")
    return value


def _number(data: Any, key: str, where: str, lo: float = -math.inf, hi: float = math.inf, integer: bool = False) -> Any:
    value = _need(data, key, int if integer else (int, float), where)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BundleCorrupt(f"{where}{key} = {value!r} is out of range")
    return value


def _ints(data: Any, key: str, where: str, n: int, lo: int, hi: int) -> list[int]:
    values = _need(data, key, list, where)
    if len(values) != n:
        raise BundleCorrupt(f"{where}{key} must have {n} entries")
    return [_number({key: v}, key, where, lo, hi, integer=True) for v in values]


def _floats(data: Any, key: str, where: str, n: int) -> list[float]:
    values = _need(data, key, list, where)
    if len(values) != n:
        raise BundleCorrupt(f"{where}{key} must have {n} entries")
    return [float(_number({key: v}, key, where)) for v in values]


@dataclass
class SourceInfo:
    path: str
    fps: float
    frames: list[int]  # [start, stop) in the source
    num_frames: int
    size: list[int]  # [width, height] of the fitted frames
    source_size: list[int] | None = None  # [width, height] of the source frames before --size (None: the same)

    @classmethod
    def parse(cls, data: Any) -> "SourceInfo":
        w = "source."
        num = _number(data, "num_frames", w, 1, MAX_FRAMES, integer=True)
        frames = _ints(data, "frames", w, 2, 0, 1 << 40)
        if frames[1] - frames[0] != num:
            raise BundleCorrupt(f"source.frames {frames} does not hold source.num_frames = {num} frames")
        native = _ints(data, "source_size", w, 2, 1, MAX_SIDE) if data.get("source_size") is not None else None
        return cls(_need(data, "path", str, w), float(_number(data, "fps", w, 1e-3, 1e4)), frames, num,
                   _ints(data, "size", w, 2, 1, MAX_SIDE), native)


@dataclass
class LayerInfo:
    name: str
    atlas_size: list[int]  # [w, h] of the baked texture
    uv_lo: list[float]
    uv_hi: list[float]

    @classmethod
    def parse(cls, data: Any, i: int) -> "LayerInfo":
        w = f"layers[{i}]."
        name = _need(data, "name", str, w)
        if not LAYER_NAME.fullmatch(name):
            raise BundleCorrupt(f"{w}name {name!r} is not a layer name (letters, digits and _ only)")
        uv = _need(data, "uv_range", dict, w)
        lo, hi = _floats(uv, "lo", w + "uv_range.", 2), _floats(uv, "hi", w + "uv_range.", 2)
        if not all(b > a for a, b in zip(lo, hi)):
            raise BundleCorrupt(f"{w}uv_range is empty (hi must exceed lo)")
        return cls(name, _ints(data, "atlas_size", w, 2, 1, MAX_SIDE), lo, hi)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "atlas_size": list(self.atlas_size), "uv_range": {"lo": list(self.uv_lo), "hi": list(self.uv_hi)}}


@dataclass
class BundleMeta:
    format_version: int
    tool_version: str
    source: SourceInfo
    layers: list[LayerInfo]
    config: dict[str, Any]
    metrics: dict[str, Any]  # psnr_per_frame, psnr_mean, iterations, layers {name: mapping quality}, ...
    timings: dict[str, float]
    seed: int
    encoding_backend: str | None = None
    device: str | None = None
    preprocess: dict[str, str] = field(default_factory=lambda: {"flow": "?", "masks": "?"})

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @classmethod
    def parse(cls, data: Any, max_format: int) -> "BundleMeta":
        """Validate a loaded bundle.json; raises :class:`BundleCorrupt` saying what is wrong."""
        if not isinstance(data, dict):
            raise BundleCorrupt("bundle.json is not a JSON object")
        version = _need(data, "format_version", int, "")
        if version < 1 or version > max_format:
            raise AtlasInputError(f"bundle format {version!r}; this atlas reads format 1 to {max_format}: upgrade atlas")
        source = SourceInfo.parse(_need(data, "source", dict, ""))
        raw_layers = _need(data, "layers", list, "")
        if not 1 <= len(raw_layers) <= 9:
            raise BundleCorrupt("layers must list 1 to 9 layers")
        layers = [LayerInfo.parse(x, i) for i, x in enumerate(raw_layers)]
        if len({x.name for x in layers}) != len(layers):
            raise BundleCorrupt("two layers share a name")
        metrics = _need(data, "metrics", dict, "")
        number = lambda p: isinstance(p, (int, float)) and not isinstance(p, bool)
        per_frame = _need(metrics, "psnr_per_frame", list, "metrics.")
        if len(per_frame) != source.num_frames or not all(number(p) for p in per_frame):
            raise BundleCorrupt(f"metrics.psnr_per_frame must hold {source.num_frames} numbers")
        gains = metrics.get("shading_gain_per_frame")
        if gains is not None and (not isinstance(gains, list) or len(gains) != source.num_frames or not all(number(g) for g in gains)):
            raise BundleCorrupt(f"metrics.shading_gain_per_frame must hold {source.num_frames} numbers")
        _number(metrics, "psnr_mean", "metrics.")
        _number(metrics, "iterations", "metrics.", 0, integer=True)
        quality = metrics.get("layers", {})
        if not isinstance(quality, dict) or not all(isinstance(v, dict) for v in quality.values()):
            raise BundleCorrupt("metrics.layers must map layer names to their mapping quality")
        if not isinstance(metrics.get("warnings", []), list) or not all(isinstance(w, str) for w in metrics.get("warnings", [])):
            raise BundleCorrupt("metrics.warnings must be a list of lines")
        timings = _need(data, "timings", dict, "")
        pre = data.get("preprocess") or {"flow": "?", "masks": "?"}
        if not isinstance(pre, dict) or not all(isinstance(pre.get(k), str) for k in ("flow", "masks")):
            raise BundleCorrupt("preprocess must name its flow and masks")
        optional = {k: data.get(k) for k in ("encoding_backend", "device")}
        if not all(v is None or isinstance(v, str) for v in optional.values()):
            raise BundleCorrupt("encoding_backend and device must be strings")
        return cls(version, str(data.get("tool_version", "?")), source, layers, _need(data, "config", dict, ""), metrics,
                   timings, _number(data, "seed", "", integer=True), preprocess=dict(pre), **optional)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as bundle.json."""
        out = asdict(self)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out
