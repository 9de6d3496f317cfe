"""Running Stable Diffusion on our float images: the settings every prompt editor shares,
working-resolution resizing, and SDEdit (img2img) with optional ControlNet structure."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from atlas.errors import AtlasInputError

from .models import Runtime, controlnet_reference, load_pipeline, structure_map

LATENT_MULTIPLE = 8  # SD's VAE downsamples 8x; UNet sizes then stay integral


@dataclass
class PromptEdit:
    """What to generate and how. `controlnet`: "auto" (the default ControlNet for the
    annotator, from $ATLAS_CONTROLNET or the local cache), a folder/file/hub id, or "none"
    for plain SDEdit. `resolution` is the long side the model works at (SD 1.5: 512)."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    controlnet: str | None = "auto"
    annotator: str = "canny"
    annotator_weights: str | None = None
    strength: float = 0.75
    steps: int = 30
    guidance: float = 7.5
    seed: int = 0
    resolution: int = 512
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise AtlasInputError("--prompt is empty")
        if not 0.0 < self.strength <= 1.0:
            raise AtlasInputError(f"--strength must be in (0, 1], got {self.strength}")
        if self.steps < 1:
            raise AtlasInputError(f"--steps must be at least 1, got {self.steps}")
        if self.resolution < 64 or self.resolution % LATENT_MULTIPLE:
            raise AtlasInputError(f"--resolution must be a multiple of {LATENT_MULTIPLE}, at least 64; got {self.resolution}")

    @property
    def controlnet_ref(self) -> str | None:
        if self.controlnet in (None, "none"):
            return None
        return controlnet_reference(None if self.controlnet == "auto" else self.controlnet, self.annotator)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator: the same seed gives the same noise on any device."""
        return torch.Generator("cpu").manual_seed(self.seed + offset)


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) with the long side at `resolution`, both multiples of LATENT_MULTIPLE."""
    scale = resolution / max(width, height)
    return tuple(max(LATENT_MULTIPLE, int(round(v * scale / LATENT_MULTIPLE)) * LATENT_MULTIPLE) for v in (width, height))  # type: ignore[return-value]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float image to (w, h): area averaging to shrink, bicubic to enlarge."""
    if image.shape[1::-1] == tuple(size):
        return image
    shrink = size[0] < image.shape[1]
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def sdedit(edit: PromptEdit, image: np.ndarray, strength: float | None = None, prompt: str | None = None,
           seed_offset: int = 0, mask: np.ndarray | None = None) -> np.ndarray:
    """[H, W, 3] float image re-generated towards the prompt (ControlNet-conditioned on the
    image's own structure unless edit.controlnet is "none"), returned at its input size.
    With a `mask` [H, W] (1 = regenerate) an inpainting pipeline keeps the rest."""
    h, w = image.shape[:2]
    size = working_size(w, h, edit.resolution)
    small = resize(image, size)
    controlnet = edit.controlnet_ref
    pipe = load_pipeline("img2img" if mask is None else "inpaint", edit.model, controlnet, edit.runtime)
    kwargs = {}
    if controlnet is not None:
        kwargs["control_image"] = structure_map(small, edit.annotator, edit.annotator_weights)[None]
    if mask is not None:
        kwargs["mask_image"] = resize(mask.astype(np.float32), size)[None, ..., None]
    if kwargs:
        kwargs.update(height=size[1], width=size[0])
    # img2img runs int(steps * strength) steps: keep at least one
    strength = max(strength or edit.strength, 1.0 / edit.steps)
    out = pipe(prompt or edit.prompt, image=small[None], strength=strength, num_inference_steps=edit.steps,
               guidance_scale=edit.guidance, negative_prompt=edit.negative_prompt or None, generator=edit.generator(seed_offset),
               output_type="np", **kwargs).images[0]
    return resize(np.asarray(out, dtype=np.float32), (w, h))
