"""The benchmarks' clips: where their data lives, and real-texture synthetic clips built from it.

The data folder is $ATLAS_BENCH_DATA, or else `shared/data` beside the checkout; it holds
`davis/<clip>/frames/*.jpg` with `davis/<clip>/masks/*.png` (ground-truth foreground) and,
for point tracking, `tapvid/<clip>.npz` (human-annotated tracks). Any DAVIS-layout clip
placed there can be named with a bench's `--clips`.

A DAVIS frame is the background seen through a turning, zooming camera; a DAVIS object
cut out with its ground-truth mask is the sprite (atlas.synthetic.make_warped_clip), so
edits and point tracks have exact ground truth on real textures.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from atlas.synthetic import WarpedClip, make_warped_clip

DATA = Path(os.environ.get("ATLAS_BENCH_DATA") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
DAVIS = DATA / "davis"
# name: (background clip, sprite clip): a textured scene behind an animal, a plain one behind a car
SCENES = {"warped-swan": ("bmx-trees", "blackswan"), "warped-car": ("paragliding-launch", "car-shadow")}
# the DAVIS clips the benches score by default, and the procedural clip's name (atlas.synthetic.make_clip)
CLIPS = ["blackswan", "bmx-trees", "car-shadow", "dance-twirl", "drift-chicane", "motocross-jump", "paragliding-launch"]
SYNTHETIC = "synthetic"


def available(clips: list[str], tracks: bool = False) -> list[str]:
    """The clips (DAVIS names, SCENES names, SYNTHETIC) whose data is here, saying which are
    not; with `tracks`, a DAVIS clip also needs its TAP-Vid tracks (the others have exact ones)."""
    have = lambda c: (DAVIS / c).is_dir()
    tracked = lambda c: have(c) and (not tracks or (DATA / "tapvid" / f"{c}.npz").is_file())
    kept = [c for c in clips if c == SYNTHETIC or (c in SCENES and all(map(have, SCENES[c]))) or (c not in SCENES and tracked(c))]
    if len(kept) < len(clips):
        print(f"skipping clips whose data is not under {DATA}: {sorted(set(clips) - set(kept))}")
    return kept


def _image(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def cut_out(clip: str) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0's object of a DAVIS clip and its mask, cropped to the mask with a margin."""
    image, mask = _image(DAVIS / clip / "frames" / "00000.jpg"), cv2.imread(str(DAVIS / clip / "masks" / "00000.png"), 0) > 127
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 4, 0), min(ys.max() + 5, mask.shape[0])
    x0, x1 = max(xs.min() - 4, 0), min(xs.max() + 5, mask.shape[1])
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.float32)


def scene_clip(name: str, num_frames: int, width: int = 427, height: int = 240) -> WarpedClip:
    """The clip of scene `name` (a key of SCENES)."""
    bg_clip, fg_clip = SCENES[name]
    sprite, alpha = cut_out(fg_clip)
    return make_warped_clip(_image(DAVIS / bg_clip / "frames" / "00000.jpg"), sprite, alpha, num_frames=num_frames, width=width, height=height)
