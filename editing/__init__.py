"""Editors that change atlases or keyframes; `edit` turns their output into a video.

Hand edits: `manual`. Text-prompt editors on Stable Diffusion (`models` loads them
offline): `videdit` (atlas region), `diffusion_atlas` (atlas, adapted model + inversion),
`stablevideo` (keyframes fused into the atlas).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError

METHODS = ("videdit", "diffusion-atlas", "stablevideo")


@dataclass
class EditResult:
    """An edit: the atlas edits and the video they give, rendered frame by frame on demand
    (:meth:`iter_frames` streams a long shot; :attr:`frames` holds it whole)."""

    render: Callable[[], Iterator[torch.Tensor]]  # yields the edited frames [H, W, 3]
    edits: dict[str, np.ndarray]  # {layer: RGBA [h, w, 4]} the edit on each atlas
    keyframes: dict[str, np.ndarray] = field(default_factory=dict)  # {"<layer>_<frame>": [H, W, 3]} generated keyframes
    bundle: AtlasBundle | None = None  # what was rendered: the input, or DiffusionAtlas's copy with re-fitted opacity

    def iter_frames(self) -> Iterator[torch.Tensor]:
        """The edited video one frame [H, W, 3] at a time."""
        return self.render()

    @functools.cached_property
    def frames(self) -> torch.Tensor:
        """The edited video [T, H, W, 3] (rendered once, then kept)."""
        return torch.stack(list(self.render()))


def edit(bundle: AtlasBundle, atlas: dict | None = None, keyframes: dict | None = None, keyframe_masks: dict | None = None,
         prompt: str | dict[str, str] | None = None, method: str | None = None, mode: str = "overlay",
         frames: torch.Tensor | None = None, layer: str | None = None, matte: str = "guided", **options) -> EditResult:
    """Apply an atlas edit, keyframe edits, or a text prompt (overlay or replace; see propagation.render).

    `frames` are the source frames to edit (default: the fitted source). `matte` is how
    the layers are cut in each frame: guided (the fitted weights refined against the
    frame's colour edges, propagation.matte) or fitted (always so for an opacity that
    DiffusionAtlas re-fitted to a new silhouette). A prompt is a
    string for `layer` (default: the first foreground, else the background) or a dict
    {layer: prompt} to edit layers separately. `options` are PromptEdit fields (model,
    controlnet, strength, steps, guidance, seed, negative_prompt, runtime, ...) and the
    method's own (see videdit, diffusion_atlas, stablevideo).
    """
    from propagation.matte import check_matte
    from propagation.render import iter_overlay, iter_replace, pin_keyframes, source_frames

    from .manual import atlas_edits, keyframe_edits

    given = [x for x in (atlas, keyframes, prompt) if x]
    if len(given) != 1:
        raise AtlasInputError("give exactly one kind of edit: atlas images, keyframes, or a prompt")
    if mode not in ("overlay", "replace"):
        raise AtlasInputError(f"mode must be overlay or replace, got {mode!r}")
    check_matte(matte)
    if prompt and method not in METHODS:
        raise AtlasInputError(f"--prompt needs --method {'|'.join(METHODS)}")
    src = source_frames(bundle, frames)
    generated: dict[str, np.ndarray] = {}
    weights, pins = None, {}  # keyframes' own layer weights and pixels (editing.manual.keyframe_edits)
    if prompt:
        edits, generated, rendered = prompt_edits(bundle, src, prompt, method, layer, options, matte)
        if rendered is not bundle:  # a re-fitted silhouette: the source frames' edges are not its edges
            bundle, matte = rendered, "fitted"
    elif options:
        raise AtlasInputError(f"options {', '.join(sorted(options))} only apply to --prompt edits")
    elif atlas:
        edits = atlas_edits(bundle, atlas)
    else:
        edits, weights, pins = keyframe_edits(bundle, src, keyframes, keyframe_masks, matte)
    if mode == "overlay":
        frames_of = functools.partial(iter_overlay, bundle, edits, src, weights, matte)
    else:
        frames_of = functools.partial(iter_replace, bundle, edited_textures(bundle, edits), src, weights, matte)
    return EditResult(lambda: pin_keyframes(frames_of(), pins), edits, generated, bundle)


def default_layer(bundle: AtlasBundle) -> str:
    return bundle.layer_names[1] if len(bundle.layer_names) > 1 else bundle.layer_names[0]


def prompt_edits(bundle: AtlasBundle, source: torch.Tensor, prompt: str | dict[str, str], method: str | None, layer: str | None,
                 options: dict, matte: str = "guided") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], AtlasBundle]:
    """({layer: RGBA edit}, {"<layer>_<frame>": generated keyframe}, the bundle to render
    with: DiffusionAtlas may re-fit opacity to an edited silhouette) from a diffusion editor
    (StableVideo splats its keyframes with the layer weights of `matte`)."""
    from .diffuse import PromptEdit

    prompts = dict(prompt) if isinstance(prompt, dict) else {layer or default_layer(bundle): prompt}
    for name in prompts:
        if name not in bundle.layer_names:
            raise AtlasInputError(f"no layer {name!r} to edit; layers: {', '.join(bundle.layer_names)}")
    fields = {f.name for f in dataclasses.fields(PromptEdit)} - {"prompt"}
    common = {k: v for k, v in options.items() if k in fields and v is not None}
    extra = {k: v for k, v in options.items() if k not in fields and v is not None}
    settings = {name: PromptEdit(prompt=text, **common) for name, text in prompts.items()}
    if method == "videdit":
        from .videdit import videdit

        edits: dict[str, np.ndarray] = {}
        for name, s in settings.items():
            edits.update(_call(videdit, bundle, s, name, **extra))
        return edits, {}, bundle
    if method == "diffusion-atlas":
        from .diffusion_atlas import diffusion_atlas

        edits = {}
        for name, s in settings.items():
            layer_edit, bundle = _call(diffusion_atlas, bundle, s, name, **extra)
            edits.update(layer_edit)
        return edits, {}, bundle
    from .stablevideo import stablevideo

    return (*_call(stablevideo, bundle, source, settings, matte=matte, **extra), bundle)


def _call(fn, *args, **extra):
    """fn(*args, **extra), with a one-line error for options the method does not take."""
    import inspect

    unknown = set(extra) - set(inspect.signature(fn).parameters)
    if unknown:
        raise AtlasInputError(f"{fn.__name__} does not take option(s) {', '.join(sorted(unknown))}")
    return fn(*args, **extra)


def edited_textures(bundle: AtlasBundle, edits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{layer: RGB [h, w, 3]}: each edited layer's baked atlas with its RGBA edit laid over."""
    out = {}
    for name, rgba in edits.items():
        base = bundle.textures[name][..., :3]
        out[name] = base + rgba[..., 3:] * (rgba[..., :3] - base)
    return out
