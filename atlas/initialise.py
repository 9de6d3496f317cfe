"""Initial per-frame global transforms and atlas extents, estimated from the flow.

Background: a homography per frame pair (RANSAC on flow from pixels outside the mask);
foreground: a similarity on pixels inside the mask. Pairwise motions are chained so each
frame maps into frame 0's plane; the learnable transforms start here.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .model import FrameGeometry
from .preprocess import Preprocessed

MAX_POINTS = 6000


def _pair_motion(flow: np.ndarray, select: np.ndarray, geom: FrameGeometry, kind: str, rng: np.random.Generator) -> np.ndarray | None:
    """3x3 motion of normalised coordinates from frame t to t+1, or None if unreliable."""
    ys, xs = np.nonzero(select)
    if len(xs) < 12:
        return None
    if len(xs) > MAX_POINTS:
        pick = rng.choice(len(xs), MAX_POINTS, replace=False)
        ys, xs = ys[pick], xs[pick]
    src = np.stack([xs, ys], -1).astype(np.float32)
    dst = src + flow[ys, xs]
    norm = lambda p: ((p + 0.5 - np.array([geom.width / 2, geom.height / 2], np.float32)) / geom.scale).astype(np.float32)
    a, b = norm(src), norm(dst)
    thr = 1.0 / geom.scale
    if kind == "homography":
        m, _ = cv2.findHomography(a, b, cv2.RANSAC, thr, maxIters=2000, confidence=0.995)
    else:
        m2, _ = cv2.estimateAffinePartial2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=thr, maxIters=2000)
        m = None if m2 is None else np.vstack([m2, [0.0, 0.0, 1.0]])
    return None if m is None or not np.all(np.isfinite(m)) else m


def chain_transforms(pre: Preprocessed, geom: FrameGeometry, kind: str, use_mask: str, seed: int = 0) -> np.ndarray:
    """[T, 3, 3] transforms taking frame t's normalised coords into frame 0's plane.

    `use_mask` is "outside" (background), "inside" (foreground) or "all" pixels.
    A pair without enough reliable points reuses the previous pair's motion.
    """
    rng = np.random.default_rng(seed)
    flow, valid, masks = pre.flow_fwd.numpy(), pre.valid_fwd.numpy(), pre.masks.numpy()
    out = [np.eye(3)]
    last = np.eye(3)
    for t in range(geom.num_frames - 1):
        m = masks[t] > 0.5
        select = valid[t] & {"inside": m, "outside": ~m}.get(use_mask, True)
        motion = _pair_motion(flow[t], select, geom, kind, rng)
        last = motion if motion is not None else last
        out.append(out[-1] @ np.linalg.inv(last))
    arr = np.stack(out)
    return arr / arr[:, 2:3, 2:3]


def _apply(h: np.ndarray, q: np.ndarray) -> np.ndarray:
    ph = q @ h[:2, :2].T + h[:2, 2]
    return ph / (q @ h[2, :2] + h[2, 2])[:, None]


def uv_range(transforms: np.ndarray, geom: FrameGeometry, masks: np.ndarray | None, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) in the canonical plane of what the frames (or masks) cover."""
    pts = []
    for t in range(geom.num_frames):
        if masks is None:
            xs = np.linspace(0, geom.width - 1, 9)
            ys = np.linspace(0, geom.height - 1, 9)
            gx, gy = np.meshgrid(xs, ys)
        else:
            gy, gx = np.nonzero(masks[t] > 0.5)
            if len(gx) == 0:
                continue
        p = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float64)
        q = (p + 0.5 - np.array([geom.width / 2, geom.height / 2])) / geom.scale
        pts.append(_apply(transforms[t], q))
    if not pts:  # no mask anywhere: cover the whole frame
        return uv_range(transforms, geom, None, margin)
    allp = np.concatenate(pts)
    lo, hi = allp.min(0), allp.max(0)
    pad = (hi - lo) * margin + 2.0 / geom.scale
    return lo - pad, hi + pad


def initial_layout(pre: Preprocessed, geom: FrameGeometry, num_fg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transforms [layers, T, 3, 3], uv_lo [layers, 2], uv_hi [layers, 2] (background first)."""
    masks = pre.masks.numpy()
    has_fg = num_fg > 0 and masks.sum() > 0
    bg = chain_transforms(pre, geom, "homography", "outside" if has_fg else "all", seed)
    transforms, los, his = [bg], [], []
    lo, hi = uv_range(bg, geom, None, 0.02)
    los.append(lo), his.append(hi)
    for _ in range(num_fg):
        fg = chain_transforms(pre, geom, "similarity", "inside", seed) if has_fg else bg
        lo, hi = uv_range(fg, geom, masks if has_fg else None, 0.15)
        transforms.append(fg), los.append(lo), his.append(hi)
    f = lambda xs: torch.from_numpy(np.stack(xs)).float()
    return f(transforms), f(los), f(his)
