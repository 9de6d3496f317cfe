"""Synthetic clips with exact ground truth, for tests, demos and benchmarks.

A textured background seen through a panning camera, and a textured disc (the sprite)
moving across it on its own path. Frame pixel (x, y) at time t shows background texel
(x + ox_t, y + oy_t) where the sprite does not cover it, so true correspondences and
true masks are known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .io import to_uint8


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


def texture(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
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
    background, sprite_tex, cam, centres, radius = _layout(num_frames, width, height, seed, camera_speed, sprite_speed)
    frames, masks = _render(background, sprite_tex, cam, centres, radius, (width, height))
    return SyntheticClip(torch.from_numpy(frames).float(), torch.from_numpy(masks), background, cam, centres, radius, sprite_tex)


def write_plate(folder: str | Path, num_frames: int, width: int, height: int, seed: int = 0, ext: str = "jpg") -> Path:
    """The clip of :func:`make_clip` at plate size (1080p, 4K), rendered and written one
    frame at a time as `plate.%04d.<ext>` under `folder`, so no shot-sized array is ever in
    memory; the camera and the sprite move the same fraction of the frame per frame at any
    size. Returns the sequence pattern."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    speed = lambda fx, fy: (width * fx, width * fy)
    background, sprite_tex, cam, centres, radius = _layout(num_frames, width, height, seed, speed(1 / 200, 1 / 600), speed(-1 / 120, 1 / 300))
    for t in range(num_frames):
        frame, _ = _render(background, sprite_tex, cam[t : t + 1], centres[t : t + 1], radius, (width, height))
        cv2.imwrite(str(folder / f"plate.{t:04d}.{ext}"), to_uint8(frame[0, ..., ::-1]))
    return folder / f"plate.%04d.{ext}"


def _layout(num_frames: int, width: int, height: int, seed: int, camera_speed: tuple[float, float],
            sprite_speed: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(background texture, sprite texture, camera path [T, 2], sprite centres [T, 2], sprite radius)."""
    rng = np.random.default_rng(seed)
    cam = np.array([[camera_speed[0] * t, camera_speed[1] * t] for t in range(num_frames)], np.float32)
    cam -= cam.min(0)
    bw = int(np.ceil(width + cam[:, 0].max())) + 2
    bh = int(np.ceil(height + cam[:, 1].max())) + 2
    background = texture(bh, bw, rng, 6)
    radius = 0.22 * min(width, height)
    size = int(2 * radius + 3)
    sprite_tex = texture(size, size, rng, 3)
    sprite_tex = 0.35 + 0.65 * sprite_tex[..., ::-1]  # a different palette from the background
    start = np.array([0.7 * width, 0.4 * height], np.float32)
    centres = np.array([start + np.array(sprite_speed) * t for t in range(num_frames)], np.float32)
    return background, sprite_tex, cam, centres, radius


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


@dataclass
class WarpedMotion:
    """Per-frame motions of a :class:`WarpedClip`, in frame pixels (x right, y down,
    pixel centres at +0.5) and texels.

    Background: texel = centre_t + cam_t (p - frame centre), cam_t = zoom x rotation.
    Sprite: q = sprite centre + obj_t^-1 (p - pos_t) (a similarity), then the texel is q
    bent sideways: (q_x - sway_t sin(pi q_y / sprite height), q_y), which inverts in
    closed form because the bend leaves q_y alone.
    """

    size: tuple[int, int]  # frame (width, height)
    sprite_size: tuple[int, int]  # (width, height)
    centre: np.ndarray  # [T, 2]
    cam: np.ndarray  # [T, 2, 2]
    pos: np.ndarray  # [T, 2]
    obj: np.ndarray  # [T, 2, 2]
    sway: np.ndarray  # [T] texels

    def bg_texel(self, t: int, p: np.ndarray) -> np.ndarray:
        return self.centre[t] + (p - np.array(self.size) / 2) @ self.cam[t].T

    def bg_pixel(self, t: int, texel: np.ndarray) -> np.ndarray:
        return np.array(self.size) / 2 + (texel - self.centre[t]) @ np.linalg.inv(self.cam[t]).T

    def fg_texel(self, t: int, p: np.ndarray) -> np.ndarray:
        q = np.array(self.sprite_size) / 2 + (p - self.pos[t]) @ np.linalg.inv(self.obj[t]).T
        return q - np.stack([self.sway[t] * np.sin(np.pi * q[..., 1] / self.sprite_size[1]), np.zeros_like(q[..., 1])], -1)

    def fg_pixel(self, t: int, texel: np.ndarray) -> np.ndarray:
        q = texel + np.stack([self.sway[t] * np.sin(np.pi * texel[..., 1] / self.sprite_size[1]), np.zeros_like(texel[..., 1])], -1)
        return self.pos[t] + (q - np.array(self.sprite_size) / 2) @ self.obj[t].T


@dataclass
class WarpedClip:
    """A clip made of two given textures: a background seen through a camera path
    (rotation, zoom, pan) and a cut-out sprite moving over it by a similarity with a mild
    bend. `bg_maps` / `fg_maps` [T, H, W, 2] hold, for every frame pixel, the texel of
    each texture it shows, so the truth of any edit painted on a texture, and of any
    point track (:meth:`true_tracks`), is exact."""

    frames: torch.Tensor  # [T, H, W, 3] float in [0, 1]
    masks: torch.Tensor  # [T, H, W] sprite opacity
    background: np.ndarray  # [Hb, Wb, 3]
    sprite: np.ndarray  # [Hs, Ws, 3]
    sprite_alpha: np.ndarray  # [Hs, Ws] in [0, 1]
    bg_maps: np.ndarray
    fg_maps: np.ndarray
    motion: WarpedMotion
    fps: float = 12.0

    def render(self, background: np.ndarray | None = None, sprite: np.ndarray | None = None) -> torch.Tensor:
        """The frames with other textures (of the same sizes): the truth of an edit."""
        frames, _ = _render_maps(self.background if background is None else background, self.sprite if sprite is None else sprite,
                                 self.sprite_alpha, self.bg_maps, self.fg_maps)
        return torch.from_numpy(frames)

    def carried_keyframe(self, keyframe: torch.Tensor, t: int) -> torch.Tensor:
        """Frame t [H, W, 3] as an (edited) frame-0 `keyframe` [H, W, 3] carried along the true
        motion: each layer's pixels resampled (bilinear) from where the keyframe shows
        them, composited by the true opacity; the clip's own frame where frame 0 does not
        show the point (outside it, or a background point the sprite covers there). No
        propagation that resamples a keyframe does better: the ceiling of its edit scores."""
        m, key = self.motion, np.ascontiguousarray(keyframe.numpy(), np.float32)
        h, w = key.shape[:2]
        source = self.frames[t].numpy()
        hidden0 = np.ascontiguousarray(self.masks[0].numpy() >= 0.5, np.float32)
        layers = []
        for to_pixel, maps, hidden in ((m.bg_pixel, self.bg_maps, hidden0), (m.fg_pixel, self.fg_maps, None)):
            src = (to_pixel(0, maps[t].astype(np.float64)) - 0.5).astype(np.float32)
            seen = (src[..., 0] >= 0) & (src[..., 0] <= w - 1) & (src[..., 1] >= 0) & (src[..., 1] <= h - 1)
            if hidden is not None:
                seen &= cv2.remap(hidden, src[..., 0], src[..., 1], cv2.INTER_LINEAR) < 0.5
            warped = cv2.remap(key, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            layers.append(np.where(seen[..., None], warped, source))
        a = self.masks[t].numpy()[..., None]
        return torch.from_numpy(layers[0] * (1 - a) + layers[1] * a)

    def true_tracks(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact tracks of queries (x, y, t) [N, 3]: positions [N, T, 2], occluded [N, T]
        (outside the frame, or a background point under the sprite) and whether each
        query lies on the sprite [N]."""
        m, masks = self.motion, self.masks.numpy()
        T, H, W = masks.shape
        t0 = queries[:, 2].astype(int)
        xy = queries[:, :2].astype(np.float64)
        on_fg = masks[t0, np.clip(xy[:, 1].astype(int), 0, H - 1), np.clip(xy[:, 0].astype(int), 0, W - 1)] >= 0.5
        texel = np.zeros_like(xy)
        for t in np.unique(t0):
            at = t0 == t
            texel[at] = np.where(on_fg[at, None], m.fg_texel(t, xy[at]), m.bg_texel(t, xy[at]))
        pos = np.stack([np.where(on_fg[:, None], m.fg_pixel(t, texel), m.bg_pixel(t, texel)) for t in range(T)], 1)
        inside = (pos[..., 0] >= 0) & (pos[..., 0] < W) & (pos[..., 1] >= 0) & (pos[..., 1] < H)
        px = np.clip(pos[..., 0].astype(int), 0, W - 1), np.clip(pos[..., 1].astype(int), 0, H - 1)
        covered = masks[np.arange(T)[None, :], px[1], px[0]] >= 0.5
        return pos.astype(np.float32), ~inside | (covered & ~on_fg[:, None]), on_fg


def _rotation(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def make_warped_clip(background: np.ndarray, sprite: np.ndarray, sprite_alpha: np.ndarray, num_frames: int = 30,
                     width: int = 427, height: int = 240, seed: int = 0, rotation_deg: float = 8.0, zoom: float = 1.25,
                     bend: float = 0.04) -> WarpedClip:
    """Build a clip from a background texture [Hb, Wb, 3] and a sprite [Hs, Ws, 3] with
    its opacity [Hs, Ws] (float in [0, 1]).

    The camera turns by up to `rotation_deg`, zooms in by `zoom` and pans, staying inside
    the background; the sprite crosses the frame, turning and scaling a little, and bends
    sideways by up to `bend` of its size. `seed` varies the directions of both paths.
    """
    rng = np.random.default_rng(seed)
    s = np.linspace(0.0, 1.0, num_frames)
    hb, wb = background.shape[:2]
    hs, ws = sprite.shape[:2]
    sign = rng.choice([-1.0, 1.0], 4)
    # camera: k shrinks as the camera zooms in; the centre pans within the room left
    theta = np.radians(rotation_deg) * sign[0] * np.sin(np.pi * s)
    k = 0.7 * min(wb / width, hb / height) / (1.0 + (zoom - 1.0) * s)
    reach = np.abs(_rotation(theta) @ np.array([[width / 2, height / 2], [width / 2, -height / 2]]).T).max(-1) * k[:, None]
    room = np.array([wb / 2, hb / 2]) - reach.max(0) - 2.0
    centre = np.array([wb / 2, hb / 2]) + 0.9 * np.stack([sign[1] * room[0] * (2 * s - 1), sign[2] * room[1] * np.sin(np.pi * s)], -1)
    # sprite: crosses the frame, turning by up to 15 degrees and scaling by up to 10%
    pos = np.stack([width / 2 + sign[3] * 0.3 * width * (1 - 2 * s), height / 2 + 0.1 * height * np.sin(2 * np.pi * s)], -1)
    sigma = 0.6 * height / max(hs, ws) * (1.0 + 0.1 * np.sin(np.pi * s))
    obj = _rotation(-sign[3] * np.radians(15.0) * np.sin(np.pi * s)) * sigma[:, None, None]
    motion = WarpedMotion((width, height), (ws, hs), centre, _rotation(theta) * k[:, None, None], pos, obj,
                          bend * ws * np.sin(np.pi * s))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    p = np.stack([xs, ys], -1)
    bg_maps = np.stack([motion.bg_texel(t, p) for t in range(num_frames)]).astype(np.float32)
    fg_maps = np.stack([motion.fg_texel(t, p) for t in range(num_frames)]).astype(np.float32)
    frames, masks = _render_maps(background, sprite, sprite_alpha, bg_maps, fg_maps)
    return WarpedClip(torch.from_numpy(frames), torch.from_numpy(masks), background, sprite, sprite_alpha, bg_maps, fg_maps, motion)


def _sample(image: np.ndarray, maps: np.ndarray, border: int) -> np.ndarray:
    """Bilinear samples of `image` at texel coordinates maps [H, W, 2] (pixel centres at +0.5)."""
    m = maps - 0.5
    return cv2.remap(image, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=border, borderValue=0)


def _render_maps(background: np.ndarray, sprite: np.ndarray, alpha: np.ndarray, bg_maps: np.ndarray,
                 fg_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames, masks = [], []
    bg_tex, fg_tex, a_tex = (np.ascontiguousarray(x, dtype=np.float32) for x in (background, sprite, alpha))
    for t in range(len(bg_maps)):
        bg = _sample(bg_tex, bg_maps[t], cv2.BORDER_REFLECT)
        fg = _sample(fg_tex, fg_maps[t], cv2.BORDER_REFLECT)
        a = _sample(a_tex, fg_maps[t], cv2.BORDER_CONSTANT)[..., None]
        frames.append(np.clip(bg * (1 - a) + fg * a, 0.0, 1.0))
        masks.append(a[..., 0])
    return np.stack(frames).astype(np.float32), np.stack(masks).astype(np.float32)
