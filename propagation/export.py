"""`atlas export`: the compositor's hand-off from a bundle.

Writes, atomically into one folder:
    atlas/<layer>.png               baked RGBA atlas per layer
    alpha/00000.png ...             total foreground opacity per frame, 8-bit
    uv/<layer>/00000.exr ...        float32 u, v (texture coordinates) and A (layer weight)
    stmap/<layer>/00000.exr ...     Nuke STMap: R = u, G = 1 - v, B = 0, A = layer weight
    shading/00000.exr ...           the frame's shading (atlas.shading), if the fit has it:
                                    RGB = gain, offset.R/G/B = offset
    quality/<layer>.png             where edits will not hold (copied from the bundle)
    export.json                     files, sizes and conventions

The per-frame maps have the source's resolution (a fit made at a smaller --size is
evaluated at the source's pixel centres; the mapping is continuous) unless `size` says
otherwise, so an STMap lines up with the plate it came from. The layer weights are those
`atlas edit` composites with: by default refined against each source frame, read at the
maps' size (the guided matte, propagation.matte), or as fitted.

Texture coordinates: texel (i, j) of a w x h atlas is centred at u = (i + 0.5) / w,
v = (j + 0.5) / h, v downwards from the top row. Nuke's STMap counts its second
coordinate upwards from the bottom row, hence G = 1 - v: an STMap node with the atlas as
source and these maps as stmap input renders the layer into each frame.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from atlas.io import atomic_path, write_exr, write_png

from .matte import check_matte
from .render import matted_maps, stream_source

CONVENTIONS = {
    "uv": "u = (i + 0.5) / atlas_width, v = (j + 0.5) / atlas_height for texel (i, j); v grows downwards",
    "stmap": "Nuke STMap: R = u, G = 1 - v (bottom-up), B = 0, A = layer weight; filter the atlas with it",
    "alpha": "1 - background weight = total foreground opacity, 8-bit PNG",
    "layer_weight": "the layer's compositing weight (as `matte` says: guided = refined against the source frame, or fitted); "
                    "frame = sum over layers of weight * atlas(uv)",
    "shading": "frame = gain * (sum over layers of weight * atlas(uv)) + offset, per channel; without shading gain = 1, offset = 0",
}


def export(bundle: AtlasBundle, out: str | Path, size: tuple[int, int] | None = None, matte: str = "guided",
           source: str | Path | np.ndarray | torch.Tensor | None = None) -> Path:
    """Write the export folder for `bundle` at `out` (replaced only if it is a previous
    export), its per-frame maps at `size` (width, height; default: the source's) with the
    layer weights of `matte` (guided: refined against the source frames, read from
    `source` as propagation.render.stream_source does; the fitted weights, with a
    warning, where there is no source; fitted)."""
    out = Path(out)
    if out.exists() and not (out / "export.json").is_file() and (out.is_file() or any(out.iterdir())):
        raise AtlasInputError(f"{out} exists and is not an atlas export; choose another -o path")
    check_matte(matte)
    w, h = size = tuple(size or bundle.source_size)
    guides = stream_source(bundle, size, source) if matte == "guided" and bundle.model.num_fg else None  # one layer: nothing to cut
    names = bundle.layer_names
    shaded = bundle.model.shading is not None
    with atomic_path(out, is_dir=True) as tmp:
        for sub in ["atlas", "alpha"] + [f"{kind}/{n}" for kind in ("uv", "stmap") for n in names] + (["shading"] if shaded else []):
            (tmp / sub).mkdir(parents=True)
        for name, tex in bundle.textures.items():
            write_png(tmp / "atlas" / f"{name}.png", tex)
        for t in range(bundle.num_frames):
            maps = matted_maps(bundle, t, None if guides is None else next(guides), matte, size, colour=False)
            write_png(tmp / "alpha" / f"{t:05d}.png", 1.0 - maps.weights[..., 0])
            for i, name in enumerate(names):
                u, v = maps.uv[..., i, 0].numpy(), maps.uv[..., i, 1].numpy()
                a = maps.weights[..., i].numpy()
                write_exr(tmp / "uv" / name / f"{t:05d}.exr", {"u": u, "v": v, "A": a})
                write_exr(tmp / "stmap" / name / f"{t:05d}.exr", {"RGBA": np.stack([u, 1.0 - v, np.zeros_like(u), a], -1)})
            if shaded:
                offset = np.broadcast_to(maps.offset.numpy(), (h, w, 3))
                write_exr(tmp / "shading" / f"{t:05d}.exr", {"RGB": maps.gain.numpy(), "offset": offset})
        quality = {}
        if bundle.path is not None and (bundle.path / "quality").is_dir():
            shutil.copytree(bundle.path / "quality", tmp / "quality")
            quality = {n: f"quality/{n}.png" for n in names if (tmp / "quality" / f"{n}.png").is_file()}
        info = {
            "frames": bundle.num_frames,
            "size": [w, h],
            "fitted_size": list(bundle.size),
            "source_size": list(bundle.source_size),
            "fps": bundle.fps,
            "layers": names,
            "matte": "fitted" if guides is None else "guided",
            "atlas": {n: {"file": f"atlas/{n}.png", "size": list(bundle.textures[n].shape[1::-1])} for n in names},
            "alpha": "alpha/%05d.png",
            "uv": {n: f"uv/{n}/%05d.exr" for n in names},
            "stmap": {n: f"stmap/{n}/%05d.exr" for n in names},
            "shading": "shading/%05d.exr" if shaded else None,
            "quality": quality,
            "metrics": bundle.meta.metrics,
            "conventions": CONVENTIONS,
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2))
    return out
