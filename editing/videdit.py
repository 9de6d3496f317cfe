"""VidEdit (zero-shot, atlas level): SDEdit of an atlas region, conditioned on the atlas's
own edge structure through a ControlNet (or inpainting of the region alone), pasted back
with a feather and propagated.

The region is the layer's coverage, a user mask or a SAM mask on the atlas. The model sees
the region's bounding box plus a margin of context, resized to its working resolution, so
atlases larger than 512 px keep their full resolution outside the edit.
"""
from __future__ import annotations

import numpy as np

from atlas.bundle import AtlasBundle

from .diffuse import PromptEdit, sdedit
from .regions import atlas_region, bounding_box, feather, paste


def videdit(bundle: AtlasBundle, edit: PromptEdit, layer: str, region_mask=None, sam_checkpoint: str | None = None,
            sam_prompt: str | None = None, inpaint: bool = False) -> dict[str, np.ndarray]:
    """{layer: RGBA edit} for one layer's atlas. `inpaint`: an inpainting pipeline
    regenerates only the region (SDEdit otherwise regenerates the whole crop, then the
    paste keeps the region)."""
    region = atlas_region(bundle, layer, region_mask, sam_checkpoint, sam_prompt)
    tex = bundle.textures[layer]
    box = bounding_box(region)
    x0, y0, x1, y1 = box
    generated = sdedit(edit, np.ascontiguousarray(tex[y0:y1, x0:x1, :3]), mask=region[y0:y1, x0:x1] if inpaint else None)
    return {layer: paste(region.shape, generated, box, feather(region))}
