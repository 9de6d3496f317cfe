"""Synthetic clips with exact ground truth, for tests, demos and benchmarks.

A textured background seen through a panning camera, and a textured disc (the sprite)
moving across it on its own path. Frame pixel (x, y) at time t shows background texel
(x + ox_t, y + oy_t) where the sprite does not cover it, so true correspondences and
true masks are known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class SyntheticClip:
    frames: torch.Tensor  # [T, H, W, 3] float in [0, 1]
    masks: torch.Tensor  # [T, H, W] float, 1 on the sprite
    background: np.ndarray  # [Hb, Wb, 3] the background texture
    camera: np.ndarray  # [T, 2] (ox, oy): frame pixel p shows background texel p + camera[t]
    sprite_centre: np.ndarray  # [T, 2] sprite centre in frame pixels
    sprite_radius: float
    sprite: np.ndarray  # [s, s, 3] the sprite's texture
    fps: float = 12.0

    def background_point(self, t: int, xy: np.ndarray) -> np.ndarray:
        """Background texel seen at frame pixels xy [N, 2] of frame t."""
        return xy + self.camera[t]

    def render(self, background: np.ndarray | None = None, sprite: np.ndarray | None = None) -> torch.Tensor:
        """The clip's frames with another background and/or sprite texture: the ground
        truth of an edit made on the true atlas."""
        frames, _ = _render(self.background if background is None else background, self.sprite if sprite is None else sprite,
                            self.camera, self.sprite_centre, self.sprite_radius, tuple(self.frames.shape[2:0:-1]))
        return torch.from_numpy(frames).float()


def _texture(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random colour texture with detail at several scales."""
    out = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((cells, 0.5), (cells * 3, 0.3), (cells * 8, 0.2)):
        small = rng.random((max(2, h * scale // w), scale, 3)).astype(np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    return np.clip(out / max(out.max(), 1e-6), 0.0, 1.0)


def _shift(image: np.ndarray, dx: float, dy: float, size: tuple[int, int]) -> np.ndarray:
    """Crop of `image` whose top-left is at (dx, dy), bilinear for sub-pixel offsets."""
    m = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]], np.float32)
    return cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_clip(num_frames: int = 10, width: int = 80, height: int = 60, seed: int = 0,
              camera_speed: tuple[float, float] = (1.5, 0.5), sprite_speed: tuple[float, float] = (-2.5, 1.0)) -> SyntheticClip:
    """Build a clip; speeds are pixels per frame (camera pans, sprite moves in frame)."""
    rng = np.random.default_rng(seed)
    cam = np.array([[camera_speed[0] * t, camera_speed[1] * t] for t in range(num_frames)], np.float32)
    cam -= cam.min(0)
    bw = int(np.ceil(width + cam[:, 0].max())) + 2
    bh = int(np.ceil(height + cam[:, 1].max())) + 2
    background = _texture(bh, bw, rng, 6)
    radius = 0.22 * min(width, height)
    size = int(2 * radius + 3)
    sprite_tex = _texture(size, size, rng, 3)
    sprite_tex = 0.35 + 0.65 * sprite_tex[..., ::-1]  # a different palette from the background
    start = np.array([0.7 * width, 0.4 * height], np.float32)
    centres = np.array([start + np.array(sprite_speed) * t for t in range(num_frames)], np.float32)
    frames, masks = _render(background, sprite_tex, cam, centres, radius, (width, height))
    return SyntheticClip(torch.from_numpy(frames).float(), torch.from_numpy(masks), background, cam, centres, radius, sprite_tex)


def _render(background: np.ndarray, sprite: np.ndarray, cam: np.ndarray, centres: np.ndarray, radius: float,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] and masks [T, H, W]: camera crop of the background, sprite over it."""
    width, height = size
    s = sprite.shape[0]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    frames, masks = [], []
    for t in range(len(cam)):
        frame = _shift(background, cam[t, 0], cam[t, 1], (width, height))
        c = centres[t]
        mask = ((xs - c[0]) ** 2 + (ys - c[1]) ** 2 <= radius**2).astype(np.float32)
        tex = _shift(sprite, -(c[0] - s / 2), -(c[1] - s / 2), (width, height))
        frames.append(frame * (1 - mask[..., None]) + tex * mask[..., None])
        masks.append(mask)
    return np.stack(frames), np.stack(masks)
