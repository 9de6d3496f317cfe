"""The atlas bundle: a directory written atomically (temp folder, then renamed).

    bundle.json          format version, source, layers, config, metrics, timings, seed (atlas.meta)
    model.safetensors    every learned tensor
    atlas/<layer>.png    baked RGBA texture per layer
    quality/<layer>.png  where the mapping is unreliable (atlas.quality), grey in [0, 1]
    cache/preprocess.safetensors   flow, consistency masks, bootstrap masks
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .config import FitConfig, config_from_dict
from .errors import AtlasInputError, first_line
from .evaluate import FrameMaps, evaluate_frame
from .io import atomic_path, read_image, write_png
from .meta import BundleCorrupt, BundleMeta
from .model import FrameGeometry, LayeredAtlas
from .preprocess import Preprocessed

if TYPE_CHECKING:
    from .track import Tracks

# 2: hash tables are [R, F] with per-level row offsets (1: [L, S, F], still read);
# 3: the model may hold per-frame shading (model.shading; bundles before 3 have none)
FORMAT_VERSION = 3
MAP_CACHE_BYTES = 1 << 30


def cache_has_room(cached: int, fm: FrameMaps) -> bool:
    """Whether frame maps like `fm` still fit MAP_CACHE_BYTES next to `cached` others."""
    maps = (x for x in (fm.rgb, fm.uv, fm.weights, fm.gain) if x is not None)
    return (cached + 1) * sum(x.numel() * x.element_size() for x in maps) <= MAP_CACHE_BYTES


def layer_names(num_fg: int) -> list[str]:
    """background, then foreground (k = 1) or foreground_1..k."""
    if num_fg <= 1:
        return ["background"] + ["foreground"] * num_fg
    return ["background"] + [f"foreground_{i + 1}" for i in range(num_fg)]


class AtlasBundle:
    """A fitted video: model, metadata, baked textures, and optionally the preprocessing."""

    def __init__(self, model: LayeredAtlas, meta: BundleMeta, textures: dict[str, np.ndarray], cache: Preprocessed | None = None,
                 path: Path | None = None, quality: dict[str, np.ndarray] | None = None) -> None:
        self.model = model
        self.meta = meta
        self.textures = textures
        self.cache = cache
        self.path = path
        self.quality = quality or {}  # {layer: [h, w] unreliability in [0, 1]} (atlas.quality)
        self._maps: dict[int, FrameMaps] = {}  # frame maps kept in memory (frame_maps)

    # ---- properties users ask for
    @property
    def fps(self) -> float:
        return self.meta.source.fps

    @property
    def num_frames(self) -> int:
        return self.model.geom.num_frames

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the fitted frames."""
        return self.model.geom.width, self.model.geom.height

    @property
    def layer_names(self) -> list[str]:
        return list(self.model.layer_names)

    @property
    def config(self) -> FitConfig:
        return bundle_config(self.meta)

    # ---- evaluation
    def frame_maps(self, t: int, size: tuple[int, int] | None = None, colour: bool = True) -> FrameMaps:
        """Reconstruction, uv per layer and layer weights of frame t, at the fitted size or
        at `size` (width, height; e.g. `source_size`, evaluated there, not upsampled).
        `colour=False` skips the reconstruction unless it is already cached (rgb is then None).

        Maps at the fitted size are kept in memory (up to MAP_CACHE_BYTES) so repeated
        renders and edits only sample textures instead of re-running the model.
        """
        if not 0 <= t < self.num_frames:
            raise AtlasInputError(f"frame index {t} out of range 0..{self.num_frames - 1}")
        if size is not None and tuple(size) != tuple(self.size):
            return evaluate_frame(self.model, t, size=tuple(size), colour=colour)
        if t in self._maps:
            return self._maps[t]
        maps = evaluate_frame(self.model, t, colour=colour)
        if colour:
            self.remember_maps({t: maps})
        return maps

    def remember_maps(self, maps: dict[int, FrameMaps]) -> None:
        """Keep already computed frame maps (e.g. the fit's final evaluation), up to the cap."""
        for t, fm in maps.items():
            if cache_has_room(len(self._maps), fm):
                self._maps[t] = fm

    def forget_maps(self) -> None:
        """Drop the frame maps kept in memory."""
        self._maps.clear()

    def render(self) -> torch.Tensor:
        """Reconstruction of every frame, [T, H, W, 3] float in [0, 1]."""
        return torch.stack(list(self.rendered_frames()))

    def rendered_frames(self) -> Iterator[torch.Tensor]:
        """The reconstruction one frame [H, W, 3] at a time (e.g. for `write_video`), so a
        long shot is never held whole."""
        for t in range(self.num_frames):
            yield self.frame_maps(t).rgb.clamp(0, 1)

    def edit(self, atlas: dict | None = None, keyframes: dict | None = None, keyframe_masks: dict | None = None,
             prompt: str | dict[str, str] | None = None, method: str | None = None, mode: str = "overlay",
             frames: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """Edited video [T, H, W, 3]; see :func:`editing.edit` for prompt `options` (imported
        lazily: `atlas` itself does not depend on the editors)."""
        from editing import edit

        return edit(self, atlas=atlas, keyframes=keyframes, keyframe_masks=keyframe_masks, prompt=prompt,
                    method=method, mode=mode, frames=frames, **options).frames

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the source frames the bundle was fitted from (before --size)."""
        return tuple(self.meta.source.source_size or self.meta.source.size)  # type: ignore[return-value]

    def track(self, points: Any, layer: str | None = None, source_size: bool = False) -> "Tracks":
        """Tracks of query points (x, y, t) through every frame, via the atlas: see
        :mod:`atlas.track` for the solve, the coordinates and when a point is visible.

        With `source_size`, queries and results are in pixels of the source frames
        (for a bundle fitted with --size), else of the fitted frames.

        Example:
            >>> tracks = bundle.track([(120.5, 80.0, 0)])
            >>> tracks.positions.shape   # [N, T, 2]
        """
        from .track import FlowField, track_points

        q = np.array(points, dtype=np.float64).reshape(-1, 3) if len(points) else np.zeros((0, 3))
        c = self.cache
        flow = FlowField(c.flow_fwd.numpy(), c.flow_bwd.numpy(), c.valid_fwd.numpy(), c.valid_bwd.numpy()) if c is not None else None
        if not source_size:
            return track_points(self.model, q, layer, flow)
        (w, h), (sw, sh) = self.size, self.source_size
        q[:, 0] *= w / sw
        q[:, 1] *= h / sh
        return track_points(self.model, q, layer, flow).scaled(sw / w, sh / h)

    def info(self) -> dict[str, Any]:
        """Summary for `atlas info`."""
        m = self.meta.to_dict()
        return {"path": str(self.path) if self.path else None, **{k: v for k, v in m.items() if k != "config"}}

    # ---- persistence
    def save(self, path: str | Path) -> Path:
        """Write the bundle atomically (temp dir, then rename over any old bundle)."""
        path = Path(path)
        check_output_dir(path)
        with atomic_path(path, is_dir=True) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "atlas").mkdir()
            for name, tex in self.textures.items():
                write_png(tmp / "atlas" / f"{name}.png", tex)
            if self.quality:
                (tmp / "quality").mkdir()
                for name, q in self.quality.items():
                    write_png(tmp / "quality" / f"{name}.png", q)
            if self.cache is not None:
                (tmp / "cache").mkdir()
                save_file(self.cache.tensors(), str(tmp / "cache" / "preprocess.safetensors"))
            (tmp / "bundle.json").write_text(json.dumps(self.meta.to_dict(), indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "AtlasBundle":
        """Open a bundle directory written by :meth:`save`; anything in it that atlas did not
        write that way is a one-line :class:`AtlasInputError`."""
        path = Path(path)
        meta_file = path / "bundle.json"
        if not meta_file.is_file():
            raise AtlasInputError(f"{path} is not an atlas bundle (no bundle.json); make one with `atlas fit`")
        try:
            meta = BundleMeta.parse(json.loads(meta_file.read_text()), FORMAT_VERSION)
            state = _read_tensors(path / "model.safetensors")
            model = build_model(meta, state).to(device)
            textures, quality = {}, {}
            for layer in meta.layers:
                tex_path = path / "atlas" / f"{layer.name}.png"
                if tex_path.is_file():
                    textures[layer.name] = _texture(tex_path, 4)
                q_path = path / "quality" / f"{layer.name}.png"
                if q_path.is_file():
                    quality[layer.name] = _texture(q_path, 1)[..., 0]
            cache = None
            cache_file = path / "cache" / "preprocess.safetensors"
            if cache_file.is_file():
                cache = Preprocessed.read(cache_file, meta.preprocess["flow"], meta.preprocess["masks"], model.geom)
        except (BundleCorrupt, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AtlasInputError(f"{path}: bundle is corrupt: {exc}") from None
        return cls(model, meta, textures, cache, path, quality)


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise BundleCorrupt(f"{file.name} is missing")
    try:
        tensors = load_file(str(file))
    except PermissionError:
        raise
    except Exception as exc:  # safetensors raises several types for truncated/corrupt files
        raise BundleCorrupt(f"cannot read {file.name}: {exc}") from None
    for name, t in tensors.items():  # a NaN weight renders black frames without a word
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BundleCorrupt(f"{file.name}: {name} holds NaN or infinite values")
    return tensors


def _texture(file: Path, channels: int) -> np.ndarray:
    """A baked image of the bundle, as float32 with `channels` channels (grey/RGB/RGBA)."""
    try:
        image = read_image(file)
    except AtlasInputError as exc:
        raise BundleCorrupt(str(exc)) from None
    if channels == 1:
        return image[..., :1]
    if image.shape[2] != channels:
        raise BundleCorrupt(f"{file.name} has {image.shape[2]} channels, not {channels}")
    return image


def bundle_config(meta: BundleMeta) -> FitConfig:
    """The config a bundle was fitted with, as this atlas reads it: what a bundle of an
    older format has no key for takes the value its atlas used."""
    cfg = config_from_dict(meta.config)
    if meta.format_version < 3:
        cfg.model.shading = "none"
    fitted = meta.config.get("model", {})
    if "colour_lod" not in fitted:
        cfg.model.colour_lod = False
    if "frame_blur" not in fitted:
        cfg.model.frame_blur = False
    if "blur_per_layer" not in fitted:  # the first bundles with a blur had one per layer
        cfg.model.blur_per_layer = True
    return cfg


def build_model(meta: BundleMeta, state: dict[str, torch.Tensor]) -> LayeredAtlas:
    """Recreate the model from bundle metadata and its saved tensors (whose shapes must be
    the ones that metadata implies)."""
    src = meta.source
    geom = FrameGeometry(src.num_frames, src.size[1], src.size[0])
    n = len(meta.layers)
    try:
        cfg = bundle_config(meta)
    except AtlasInputError as exc:
        raise BundleCorrupt(f"its config: {exc}") from None
    if cfg.model.num_foregrounds != n - 1:
        raise BundleCorrupt(f"{n} layers, but its config has {cfg.model.num_foregrounds} foregrounds")
    want = {"transforms": (geom.num_frames, 3, 3), "uv_lo": (2,), "uv_hi": (2,)}
    for i in range(n):
        for key, shape in want.items():
            tensor = state.get(f"mappings.{i}.{key}")
            if tensor is None or tuple(tensor.shape) != shape:  # (every tensor is finite: _read_tensors)
                raise BundleCorrupt(f"model.safetensors: mappings.{i}.{key} is missing or not a {list(shape)} tensor")
    transforms = torch.stack([state[f"mappings.{i}.transforms"] for i in range(n)])
    lo = torch.stack([state[f"mappings.{i}.uv_lo"] for i in range(n)])
    hi = torch.stack([state[f"mappings.{i}.uv_hi"] for i in range(n)])
    if not bool((hi > lo).all()):
        raise BundleCorrupt("model.safetensors: a layer's uv range is empty")
    model = LayeredAtlas(geom, cfg.model, meta.layer_names, transforms, lo, hi, backend=cfg.model.encoding_backend)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise BundleCorrupt(f"model.safetensors does not match bundle.json: {first_line(exc)}") from None
    return model.eval()


def check_output_dir(path: Path) -> None:
    """Refuse to replace a directory that is not a bundle (never clobber user data)."""
    if path.exists() and not (path / "bundle.json").is_file():
        if path.is_file() or any(path.iterdir()):
            raise AtlasInputError(f"{path} exists and is not an atlas bundle; choose another -o path")
