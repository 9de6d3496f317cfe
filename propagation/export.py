"""`atlas export`: the compositor's hand-off from a bundle.

Writes, atomically into one folder:
    atlas/<layer>.png     baked RGBA atlas per layer
    alpha/00000.png...    per-frame total foreground opacity, 8-bit, fitted frame size
    export.json           what was written, sizes and conventions
"""
from __future__ import annotations

import json
from pathlib import Path

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from atlas.io import atomic_path, write_png


def export(bundle: AtlasBundle, out: str | Path) -> Path:
    """Write the export folder for `bundle` at `out` (replaced only if it is a previous export)."""
    out = Path(out)
    if out.exists() and not (out / "export.json").is_file() and (out.is_file() or any(out.iterdir())):
        raise AtlasInputError(f"{out} exists and is not an atlas export; choose another -o path")
    w, h = bundle.size
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "atlas").mkdir()
        for name, tex in bundle.textures.items():
            write_png(tmp / "atlas" / f"{name}.png", tex)
        (tmp / "alpha").mkdir()
        for t in range(bundle.num_frames):
            weights = bundle.frame_maps(t).weights
            write_png(tmp / "alpha" / f"{t:05d}.png", 1.0 - weights[..., 0])
        info = {
            "frames": bundle.num_frames,
            "size": [w, h],
            "atlas": {name: {"file": f"atlas/{name}.png", "size": list(tex.shape[1::-1])} for name, tex in bundle.textures.items()},
            "alpha": {"pattern": "alpha/%05d.png", "meaning": "total foreground opacity (1 - background weight), 8-bit"},
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2))
    return out
