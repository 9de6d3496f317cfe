"""Fit configuration: dataclasses with documented defaults, YAML presets, `--set` overrides.

Presets live in ``configs/<name>.yaml`` and only list what differs from these defaults.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cuda_ext import BACKENDS

from .errors import AtlasInputError, first_line
from .io import FRAME_DEPTHS
from .shading import SHADING_MODES

# the presets: configs/ beside the packages in a checkout (and an editable install), or
# the copy a regular `pip install` puts inside the package (setup.py maps it to atlas/configs)
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = next((d for d in (_HERE.parent / "configs", _HERE / "configs") if d.is_dir()), _HERE.parent / "configs")
FLOW_METHODS = ("auto", "raft", "dis")
COLOUR_REFINES = ("none", "grow", "trim")  # atlas.preprocess.colour_refined (not "off": YAML reads it as false)


def limits(lo: float, hi: float | None = None, exclusive: bool = False) -> dict[str, Any]:
    """Field metadata: the value must be >= lo (> lo if `exclusive`) and <= hi; checked
    when a preset, `--set` or a bundle's config is applied, so a bad value is one line."""
    return {"limits": (lo, hi, exclusive)}


def choices(*allowed: str) -> dict[str, Any]:
    """Field metadata: the value must be one of `allowed`."""
    return {"choices": allowed}


def _check_value(name: str, value: Any, meta: Any) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise AtlasInputError(f"config key {name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if "limits" in meta:
        lo, hi, exclusive = meta["limits"]
        ok = math.isfinite(value) and value >= lo and not (exclusive and value == lo) and (hi is None or value <= hi)
        if not ok:
            num = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"
            want = f"> {num(lo)}" if exclusive else f">= {num(lo)}"
            want += f" and <= {num(hi)}" if hi is not None else ""
            raise AtlasInputError(f"config key {name} must be {want}, got {value!r}")


@dataclass
class ModelConfig:
    num_foregrounds: int = field(default=1, metadata=limits(0, 8))
    """Foreground layers over the background; 0 gives one deformation field (CoDeF-like)."""
    log2_table_size: int = field(default=19, metadata=limits(4, 24))
    """Hash table size per level is 2**this (smaller grids use a dense table)."""
    hidden: int = field(default=32, metadata=limits(1, 1024))
    """Width of every small MLP."""
    colour_levels: int = field(default=16, metadata=limits(1, 32))
    """Levels of each layer's 2-D colour grid."""
    colour_hidden_layers: int = field(default=1, metadata=limits(0, 8))
    """Hidden layers of the colour MLP."""
    colour_density: float = field(default=1.0, metadata=limits(0.0, 16.0, exclusive=True))
    """Finest colour-grid vertices per source pixel of atlas extent."""
    colour_lod: bool = True
    """Colour seen at each pixel's footprint: a frame that sees a layer from further away than
    its closest frame reads the colour grid's coarser levels only (HashGrid.level_weights), so
    a shot that zooms (an object coming closer) neither aliases in its far frames nor blurs
    its close ones. Baked atlases keep the full detail."""
    frame_blur: bool = True
    """With colour_lod: each frame reads its layers at their footprints times a learned factor
    (LayeredAtlas.blur), as a camera blurs a frame (motion blur, focus): a blurred frame then
    neither pulls the atlas's detail toward its blur nor shows detail it does not have."""
    blur_per_layer: bool = False
    """With frame_blur: a factor per frame and layer instead of one per frame for all layers.
    A foreground's own blur also lets it read blurred what no layer can hold (a video
    screen, smoke) better than the background can, so it keeps those parts."""
    residual_levels: int = field(default=6, metadata=limits(1, 32))
    """Levels of the 3-D grid of the mapping residual (coarse: motion is smooth)."""
    residual_finest_frac: float = field(default=0.125, metadata=limits(0.0, 4.0, exclusive=True))
    """Finest residual-grid resolution as a fraction of the frame size."""
    alpha_levels: int = field(default=8, metadata=limits(1, 32))
    """Levels of the 3-D opacity grid."""
    alpha_finest_frac: float = field(default=0.5, metadata=limits(0.0, 4.0, exclusive=True))
    """Finest opacity-grid resolution as a fraction of the frame size."""
    shading: str = field(default="smooth", metadata=choices(*SHADING_MODES))
    """Per-frame shading of the composite (atlas.shading): smooth (a gain smooth across the
    frame and an offset, per frame and channel: exposure, white balance, vignetting) | none."""
    encoding_backend: str = field(default="auto", metadata=choices(*BACKENDS))
    """Hash-encoding backend: auto|cuda|cpu|torch|tcnn."""


@dataclass
class LossConfig:
    recon: float = field(default=1.0, metadata=limits(0.0))
    """Weight of the squared RGB reconstruction error."""
    flow: float = field(default=0.0015, metadata=limits(0.0))
    """Weight of uv flow consistency (atlas pixels, Charbonnier), weighted by layer opacity.
    The flow holds the mapping where the texture cannot (flat or repeating regions); the
    reconstruction locks it onto the texture without the flow's errors, so a light flow
    weight tracks better than a heavy one (bench/track_bench.py) and 0 lets edits swim."""
    flow_boost: float = field(default=4.0, metadata=limits(1.0))
    """Most a foreground pixel's flow term is multiplied by where the reconstruction misses
    the pixel inside the object (losses.flow_boost: its colour error over 0.03): blurred or
    fast-deforming parts, which the texture cannot place, follow their flow harder. 1
    turns it off."""
    rigidity: float = field(default=0.01, metadata=limits(0.0))
    """Weight of the residual's finite-difference Jacobian (keeps the residual a smooth bend of the global transform)."""
    residual_size: float = field(default=2e-4, metadata=limits(0.0))
    """Weight of the residual's size (atlas px, losses.residual_size): rigidity leaves a
    residual that shifts a whole layer frame by frame free, and a foreground's texture
    then slides (its tracks and edits follow the reconstruction, not the object)."""
    mask: float = field(default=0.5, metadata=limits(0.0))
    """Initial weight of the mask bootstrapping BCE; decays linearly to 0."""
    mask_anneal: float = field(default=0.5, metadata=limits(0.0, 1.0))
    """Fraction of the iterations over which the mask weight decays."""
    long_range: float = field(default=0.0, metadata=limits(0.0))
    """Weight of long-range consistency: both ends of a long-range correspondence (frames
    up to preprocess.long_range_stride apart) land on the same atlas point of each layer
    that shows at both ends (losses.correspondence: a wrong match costs at most 1). Off by
    default, as it did not raise tracking accuracy in bench/track_bench.py; the
    correspondences still set and refine the initial transforms and measure drift
    (atlas.diagnose)."""
    alpha_flow: float = field(default=0.05, metadata=limits(0.0))
    """Weight of foreground opacity consistency along the flow."""
    residual_change: float = field(default=0.01, metadata=limits(0.0))
    """Weight of the mapping residual's change along the layer's global motion, where the
    flow to the next frame is unreliable (losses.residual_change): keeps a part the flow
    loses for a few frames from jumping to a second copy of itself in the atlas."""
    shading: float = field(default=1e-3, metadata=limits(0.0))
    """Weight of the prior holding each frame's shading near no change (atlas.shading):
    light, so it only settles what the atlas and the shading could both explain."""
    sparsity: float = field(default=0.002, metadata=limits(0.0))
    """Weight of the mean foreground opacity (keeps foregrounds from swallowing the background)."""


@dataclass
class TrainConfig:
    iters: int = field(default=3000, metadata=limits(1, 10_000_000))
    """Optimisation steps (a --time-budget may stop earlier)."""
    batch: int = field(default=8192, metadata=limits(16, 1 << 21))
    """Pixels per step."""
    lr_grid: float = field(default=1e-2, metadata=limits(0.0))
    """Adam learning rate of the hash tables and the per-frame shading."""
    lr_mlp: float = field(default=2e-3, metadata=limits(0.0))
    """Adam learning rate of the MLPs."""
    lr_transform: float = field(default=2e-4, metadata=limits(0.0))
    """Adam learning rate of the per-frame global transforms."""
    checkpoint_every: int = field(default=500, metadata=limits(0))
    """Steps between resumable checkpoints (0: none)."""
    eval_every: int = field(default=10, metadata=limits(1))
    """Steps between reads of the running PSNR (the only time a GPU fit waits for the GPU)."""
    compile: bool = False
    """torch.compile the step's loss and its backward (fuses a few hundred small ops). On
    2 CPU cores: 1.2-1.4x faster steps after compiling for about 25 s (a few seconds once
    inductor's cache holds the shot's size), so it pays off on fits of more than about two
    minutes (bench/fit_bench.py). Not measured on a GPU (needs Triton). Falls back to eager
    steps, with a warning, where compiling fails."""
    spill: str = field(default="auto", metadata=choices("auto", "always", "never"))
    """Keep the shot's frames, flows and masks in memory-mapped files beside the output
    instead of in RAM (atlas.spill): auto does so when the shot would not fit in RAM
    otherwise. The fit is the same bit for bit."""
    cuda_graph: bool = False
    """On a GPU, capture the step (forward, backward, Adam) in a CUDA graph and replay it.
    Experimental: its speed on a GPU is not yet measured; the CPU ignores it."""


@dataclass
class PreprocessConfig:
    frame_depth: str = field(default="source", metadata=choices(*FRAME_DEPTHS))
    """How the shot's frames are kept: source (8-bit footage as uint8; 16-bit plates as
    uint16 and EXR/float plates as float16, 6 bytes a pixel) | 8 (any plate as uint8, 3
    bytes a pixel: half the frames' memory, at the cost of 8-bit reconstruction targets)."""
    flow: str = field(default="auto", metadata=choices(*FLOW_METHODS))
    """Optical flow: auto (RAFT if weights are local, else DIS) | raft | dis."""
    motion_threshold: float = field(default=0.0, metadata=limits(0.0))
    """Motion-bootstrap mask: flow deviation (pixels) from the camera motion; 0 = automatic (atlas.preprocess.motion_masks)."""
    colour_refine: str = field(default="none", metadata=choices(*COLOUR_REFINES))
    """Re-cut each motion-bootstrap mask by colour (atlas.preprocess.colour_refined): none |
    grow (add what the object's colours claim near the mask: parts whose flow looked like
    the camera's) | trim (also remove what they disown: flow spilled past the edge; loses
    thin parts). Measure on your shots with bench/bootstrap_bench.py and bench/track_bench.py."""
    long_range_stride: int = field(default=16, metadata=limits(0, 256))
    """Longest stride (frames) of the long-range correspondences (flow between frames t and
    t + k for k = 1, 2, 4, ... up to this; atlas.longrange); 0 turns them off."""
    long_range_samples: int = field(default=2048, metadata=limits(16, 1 << 16))
    """Correspondences kept per frame pair and stride."""


@dataclass
class FitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_field_type(value: Any, typ: type) -> Any:
    """A YAML value as the field's type where YAML's reading is only a matter of spelling:
    1 for a float field, frame_depth=8 (a number) for a string field, 5e-4 (YAML 1.1 reads
    an exponent without a dot as a string) for a float field. Anything else unchanged."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is float and number:
        return float(value)
    if typ is str and number:
        return str(value)
    if typ is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def update_config(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Set the fields named in the nested dict `updates`, checking names, types and limits."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        if key not in names:
            raise AtlasInputError(f"unknown config key {prefix + str(key)!r}; known: {', '.join(prefix + n for n in names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise AtlasInputError(f"config key {prefix}{key} is a section; set its fields, e.g. {prefix}{key}.{next(iter(dataclasses.asdict(current)))}=...")
            update_config(current, value, f"{prefix}{key}.")
            continue
        typ = type(current)
        value = _as_field_type(value, typ)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise AtlasInputError(f"config key {prefix}{key} expects {typ.__name__}, got {value!r}")
        _check_value(f"{prefix}{key}", value, names[key].metadata)
        setattr(obj, key, value)


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(preset: str | Path | dict | None = "default", overrides: list[str] | dict | None = None) -> FitConfig:
    """Defaults <- preset (a name in configs/, a YAML path, or a dict) <- overrides.

    Overrides are ``section.key=value`` strings (values parsed as YAML) or a nested dict.

    Example:
        >>> cfg = load_config("fast", ["train.iters=200"])
    """
    cfg = FitConfig()
    if isinstance(preset, dict):
        data = preset
    elif preset is not None:
        path = Path(preset)
        if path.suffix not in (".yaml", ".yml"):
            path = CONFIG_DIR / f"{preset}.yaml"
            if not path.is_file():
                raise AtlasInputError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())} or give a .yaml path")
        if not path.is_file():
            raise AtlasInputError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise AtlasInputError(f"config {path} is not valid YAML: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise AtlasInputError(f"config {path} must be a mapping of sections")
    else:
        data = {}
    update_config(cfg, data)
    if isinstance(overrides, dict):
        update_config(cfg, overrides)
    else:
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise AtlasInputError(f"--set expects key=value (e.g. train.iters=500), got {item!r}")
            nested: dict[str, Any] = {}
            node = nested
            parts = key.strip().split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
            update_config(cfg, nested)
    return cfg


def config_from_dict(data: dict[str, Any]) -> FitConfig:
    """Rebuild a config saved in a bundle."""
    cfg = FitConfig()
    update_config(cfg, data)
    return cfg
