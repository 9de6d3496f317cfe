"""Editors that change atlases or keyframes; `edit` turns their output into a video.

Hand edits (`manual`) are implemented. Diffusion editors (VidEdit, DiffusionAtlas,
StableVideo) are not yet: asking for them raises a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError

METHODS = ("videdit", "diffusion-atlas", "stablevideo")


@dataclass
class EditResult:
    frames: torch.Tensor  # [T, H, W, 3] edited video
    edits: dict[str, np.ndarray]  # {layer: RGBA [h, w, 4]} the edit on each atlas


def edit(bundle: AtlasBundle, atlas: dict | None = None, keyframes: dict | None = None, keyframe_masks: dict | None = None,
         prompt: str | None = None, method: str | None = None, mode: str = "overlay", frames: torch.Tensor | None = None) -> EditResult:
    """Apply an atlas edit, keyframe edits, or (not yet) a text prompt; see DESIGN.md §Edits.

    `frames` are the source frames to edit (default: the bundle's reconstruction).
    """
    from propagation.render import iter_overlay, iter_replace, source_frames

    from .manual import atlas_edits, keyframe_edits

    given = [x for x in (atlas, keyframes, prompt) if x]
    if len(given) != 1:
        raise AtlasInputError("give exactly one kind of edit: atlas images, keyframes, or a prompt")
    if prompt:
        if method not in METHODS:
            raise AtlasInputError(f"--prompt needs --method {'|'.join(METHODS)}")
        raise AtlasInputError(f"the {method} diffusion editor is not implemented yet; use --atlas or --keyframe edits")
    if mode not in ("overlay", "replace"):
        raise AtlasInputError(f"mode must be overlay or replace, got {mode!r}")
    src = source_frames(bundle, frames)
    edits = atlas_edits(bundle, atlas) if atlas else keyframe_edits(bundle, src, keyframes, keyframe_masks)
    if mode == "overlay":
        out = list(iter_overlay(bundle, edits, src))
    else:
        out = list(iter_replace(bundle, edited_textures(bundle, edits), src))
    return EditResult(torch.stack(out), edits)


def edited_textures(bundle: AtlasBundle, edits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{layer: RGB [h, w, 3]}: each edited layer's baked atlas with its RGBA edit laid over."""
    out = {}
    for name, rgba in edits.items():
        base = bundle.textures[name][..., :3]
        out[name] = base + rgba[..., 3:] * (rgba[..., :3] - base)
    return out
