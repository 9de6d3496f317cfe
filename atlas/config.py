"""Fit configuration: dataclasses with documented defaults, YAML presets, `--set` overrides.

Presets live in ``configs/<name>.yaml`` and only list what differs from these defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import AtlasInputError

# the presets: configs/ beside the packages in a checkout (and an editable install), or
# the copy a regular `pip install` puts inside the package (setup.py maps it to atlas/configs)
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = next((d for d in (_HERE.parent / "configs", _HERE / "configs") if d.is_dir()), _HERE.parent / "configs")


@dataclass
class ModelConfig:
    num_foregrounds: int = 1
    """Foreground layers over the background; 0 gives one deformation field (CoDeF-like)."""
    log2_table_size: int = 19
    """Hash table size per level is 2**this (smaller grids use a dense table)."""
    hidden: int = 32
    """Width of every small MLP."""
    colour_levels: int = 16
    """Levels of each layer's 2-D colour grid."""
    colour_hidden_layers: int = 1
    """Hidden layers of the colour MLP."""
    colour_density: float = 1.0
    """Finest colour-grid vertices per source pixel of atlas extent."""
    residual_levels: int = 6
    """Levels of the 3-D grid of the mapping residual (coarse: motion is smooth)."""
    residual_finest_frac: float = 0.125
    """Finest residual-grid resolution as a fraction of the frame size."""
    alpha_levels: int = 8
    """Levels of the 3-D opacity grid."""
    alpha_finest_frac: float = 0.5
    """Finest opacity-grid resolution as a fraction of the frame size."""
    encoding_backend: str = "auto"
    """Hash-encoding backend: auto|cuda|cpu|torch|tcnn."""


@dataclass
class LossConfig:
    recon: float = 1.0
    """Weight of the squared RGB reconstruction error."""
    flow: float = 0.005
    """Weight of uv flow consistency (atlas pixels, Charbonnier), weighted by layer opacity.
    Measured on blackswan (90 s fits): 0.02/0.05 (flow/rigidity) gave 27.2 dB, 0.005/0.01
    27.7 dB, 0/0 28.4 dB but 1.0 px mean flow drift instead of 0.14 px: edits would swim."""
    rigidity: float = 0.01
    """Weight of the residual's finite-difference Jacobian (keeps the mapping close to its global transform)."""
    mask: float = 0.5
    """Initial weight of the mask bootstrapping BCE; decays linearly to 0."""
    mask_anneal: float = 0.5
    """Fraction of the iterations over which the mask weight decays."""
    alpha_flow: float = 0.05
    """Weight of foreground opacity consistency along the flow."""
    sparsity: float = 0.002
    """Weight of the mean foreground opacity (keeps foregrounds from swallowing the background)."""


@dataclass
class TrainConfig:
    iters: int = 3000
    """Optimisation steps (a --time-budget may stop earlier)."""
    batch: int = 8192
    """Pixels per step."""
    lr_grid: float = 1e-2
    """Adam learning rate of the hash tables."""
    lr_mlp: float = 2e-3
    """Adam learning rate of the MLPs."""
    lr_transform: float = 2e-4
    """Adam learning rate of the per-frame global transforms."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints."""
    eval_every: int = 10
    """Steps between reads of the running PSNR (the only time a GPU fit waits for the GPU)."""
    cuda_graph: bool = False
    """On a GPU, capture the step (forward, backward, Adam) in a CUDA graph and replay it.
    Experimental: its speed on a GPU is not yet measured; the CPU ignores it."""


@dataclass
class PreprocessConfig:
    flow: str = "auto"
    """Optical flow: auto (RAFT if weights are local, else DIS) | raft | dis."""
    motion_threshold: float = 0.0
    """Motion-bootstrap mask: flow deviation (pixels) from the camera motion; 0 = automatic (Otsu)."""


@dataclass
class FitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        if key not in names:
            raise AtlasInputError(f"unknown config key {prefix}{key!r}; known: {', '.join(prefix + n for n in names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise AtlasInputError(f"config key {prefix}{key} is a section; set its fields, e.g. {prefix}{key}.{next(iter(dataclasses.asdict(current)))}=...")
            _apply(current, value, f"{prefix}{key}.")
            continue
        typ = type(current)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise AtlasInputError(f"config key {prefix}{key} expects {typ.__name__}, got {value!r}")
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
            raise AtlasInputError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise AtlasInputError(f"config {path} must be a mapping of sections")
    else:
        data = {}
    _apply(cfg, data)
    if isinstance(overrides, dict):
        _apply(cfg, overrides)
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
            _apply(cfg, nested)
    return cfg


def config_from_dict(data: dict[str, Any]) -> FitConfig:
    """Rebuild a config saved in a bundle."""
    cfg = FitConfig()
    _apply(cfg, data)
    return cfg
