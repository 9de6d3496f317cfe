"""Hand edits: a painted atlas (RGBA over an exported atlas) or edited keyframes."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from atlas.io import read_image
from propagation.render import matted_maps
from propagation.splat import SplatAccumulator, change_mask, keyframe_weights, splat_frame

ImageLike = str | Path | np.ndarray | torch.Tensor


def load_image(image: ImageLike) -> np.ndarray:
    """[H, W, C] float image from a path, an array or a tensor."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return (arr[..., None] if arr.ndim == 2 else arr).astype(np.float32)


def _frame_sized(arr: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """A keyframe or mask at the fitted size; a source-resolution image (same aspect) is
    resized, so frames of a clip fitted with --size can be edited at full resolution."""
    w, h = size
    if arr.shape[:2] == (h, w):
        return arr
    src_h, src_w = arr.shape[:2]
    if abs(src_w / src_h - w / h) > 0.02:
        raise AtlasInputError(f"{what} is {src_w}x{src_h}; the fitted frames are {w}x{h}")
    out = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
    return out[..., None] if out.ndim == 2 else out


def atlas_edits(bundle: AtlasBundle, images: dict[str, ImageLike]) -> dict[str, np.ndarray]:
    """{layer: RGBA [h, w, 4]} from images painted over the exported atlases.

    A texel is edited where the image's colour differs from the baked atlas, with the
    image's alpha (if any) as opacity. So both a painted copy of the exported atlas and a
    decal on a transparent canvas work, and untouched texels leave the video unchanged.
    """
    out = {}
    for name, image in images.items():
        if name not in bundle.layer_names:
            raise AtlasInputError(f"--atlas {name}=...: no layer {name!r}; layers: {', '.join(bundle.layer_names)}")
        arr = load_image(image)
        base = bundle.textures[name]
        if arr.shape[:2] != base.shape[:2]:
            raise AtlasInputError(f"atlas edit for {name} is {arr.shape[1]}x{arr.shape[0]}; the {name} atlas is {base.shape[1]}x{base.shape[0]} (edit the exported atlas/{name}.png)")
        rgb = np.repeat(arr[..., :1], 3, axis=2) if arr.shape[2] in (1, 2) else arr[..., :3]
        opacity = arr[..., -1] if arr.shape[2] in (2, 4) else np.ones(arr.shape[:2], np.float32)
        changed = change_mask(torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(np.ascontiguousarray(base[..., :3]))).numpy()
        out[name] = np.concatenate([rgb, (opacity * changed)[..., None]], axis=2).astype(np.float32)
    return out


class KeyframeEdits(NamedTuple):
    edits: dict[str, np.ndarray]  # {layer: RGBA} splatted from the keyframes
    weights: dict[int, torch.Tensor]  # {frame index: layer weights [H, W, layers] it was splatted with}: render it with those
    pins: dict[int, tuple[torch.Tensor, torch.Tensor]]  # {frame index: (edited keyframe [H, W, 3], its mask [H, W] in [0, 1])}


def keyframe_edits(bundle: AtlasBundle, source: torch.Tensor, keyframes: dict[int, ImageLike],
                   masks: dict[int, ImageLike] | None = None, matte: str = "guided") -> KeyframeEdits:
    """The atlas edits splatted from edited keyframes {frame index: image}, the layer weights
    each keyframe was splatted with, and the keyframes with their masks: the rendered video
    shows each keyframe's own paint exactly in its frame (propagation.render.pin_keyframes).

    A keyframe's mask (white = edited) defaults to where it differs from the source frame.
    Each keyframe's layer weights are its `matte`'s (propagation.render.matted_maps),
    checked by propagation.splat.keyframe_weights.
    """
    masks = masks or {}
    unknown = set(masks) - set(keyframes)
    if unknown:
        raise AtlasInputError(f"--keyframe-mask given for frame(s) {sorted(unknown)} without a --keyframe")
    w, h = bundle.size
    weights, pins = {}, {}
    acc = [SplatAccumulator(tex.shape[1], tex.shape[0]) for tex in (bundle.textures[n] for n in bundle.layer_names)]
    for index, image in sorted(keyframes.items()):
        if not 0 <= index < bundle.num_frames:
            raise AtlasInputError(f"keyframe index {index} out of range 0..{bundle.num_frames - 1}")
        arr = _frame_sized(load_image(image), (w, h), f"keyframe {index}")
        edited = torch.from_numpy(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3].copy())
        if index in masks:
            m = _frame_sized(load_image(masks[index]), (w, h), f"keyframe mask {index}")
            mask = torch.from_numpy(m[..., :3].mean(-1) if m.shape[2] >= 3 else m[..., 0].copy())
        else:
            mask = change_mask(edited, source[index])
        maps = matted_maps(bundle, index, source[index], matte)
        weights[index] = keyframe_weights(bundle.model, maps, index, mask)
        splat_frame(acc, maps, edited, mask, weights=weights[index])
        pins[index] = (edited, mask.clamp(0.0, 1.0))
    return KeyframeEdits({name: a.rgba() for name, a in zip(bundle.layer_names, acc)}, weights, pins)
