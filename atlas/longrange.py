"""Long-range correspondences: pixels matched between frames t and t + k, k = 1, 2, 4, ...

Consecutive flow alone lets errors add up along the chain of frames. Here, for each stride
k (powers of two up to `max_stride`), OpenCV DIS computes the flow between frames t and
t + k directly, started from the composition of the two stride-k/2 flows (so large
displacements are found) and kept only where its forward and backward flows agree and
both stride-k/2 matches it was started from were kept (a cycle check down to the
consecutive flow: forward-backward agreement alone passes wrong matches on flat sky or
between frames that no longer overlap, and a wrong long-range match teaches the drift it
should catch). A sample of the surviving pixels of every (t, k) becomes a correspondence.
They measure whether a fitted layer drifts (atlas.diagnose), and with `loss.long_range`
the fit asks both ends to land on the same atlas point (losses.correspondence).

A plate larger than ANALYSIS_SIDE pixels on a side is matched at that size (its consecutive
flows area-filtered down, the matches scaled back to the plate's pixels): a sample of a
few thousand matches per (t, k) needs no dense flow at 4K, which would cost most of the
preprocessing there. Stride 1 keeps the full-resolution consecutive flow.

Correspondences are rows (t, x, y, t2, x2, y2), float32, in the model's pixel coordinates
(pixel (i, j) is x = i, y = j).
"""
from __future__ import annotations

import cv2
import numpy as np
from tqdm.auto import tqdm

from .preprocess import ANALYSIS_SIDE, consistency, grey_u8, warp_sample

COLUMNS = 6


def strides(num_frames: int, max_stride: int) -> list[int]:
    """1, 2, 4, ... up to `max_stride`, each shorter than the shot."""
    out, k = [], 1
    while k <= max_stride and k < num_frames:
        out.append(k)
        k *= 2
    return out


def sample_pairs(flow: np.ndarray, valid: np.ndarray, t: int, k: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` correspondences [M, 6] from frame t to t + k, at pixels where `valid`."""
    ys, xs = np.nonzero(valid)
    if len(xs) > count:
        pick = rng.choice(len(xs), count, replace=False)
        ys, xs = ys[pick], xs[pick]
    f = flow[ys, xs]
    return np.stack([np.full(len(xs), t), xs, ys, np.full(len(xs), t + k), xs + f[:, 0], ys + f[:, 1]], 1).astype(np.float32)


def consecutive_pairs(fwd: np.ndarray, valid_fwd: np.ndarray, per_pair: int, rng: np.random.Generator) -> np.ndarray:
    """Stride-1 correspondences [M, 6] sampled from the consecutive flow where it is valid."""
    return np.concatenate([sample_pairs(fwd[t], valid_fwd[t], t, 1, per_pair, rng) for t in range(len(fwd))])


def long_range_pairs(frames: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, valid_fwd: np.ndarray, max_stride: int,
                     per_pair: int, seed: int = 0, progress: bool = False) -> np.ndarray:
    """Correspondences [M, 6] of frames [T, H, W, 3] for every stride up to `max_stride`,
    at most `per_pair` for each (t, k); stride 1 reuses the consecutive flow (fwd, bwd,
    valid_fwd). Empty when `max_stride` is 0."""
    rng = np.random.default_rng(seed)
    T = frames.shape[0]
    ks = strides(T, max_stride)
    if not ks:
        return np.zeros((0, COLUMNS), np.float32)
    rows = [consecutive_pairs(fwd, valid_fwd, per_pair, rng)]
    H, W = frames.shape[1:3]
    shrink = max(W, H) / ANALYSIS_SIDE
    size = (W, H) if shrink <= 1 else (max(1, round(W / shrink)), max(1, round(H / shrink)))
    scale = np.array([W / size[0], H / size[1]], np.float32)  # plate pixels per matched pixel
    grey = [_resized(grey_u8(f), size) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    # frames go from last to first; at frame t, stride k's flow (k = 2, 4, ...) is DIS
    # started from stride k/2's flows at t and t + k/2 composed, so each stride keeps only
    # its last k/2 + 1 frames' flows: the memory of a few frames, not of the shot
    kept: dict[int, dict[int, tuple[np.ndarray, ...]]] = {k: {} for k in ks}  # (forward, backward, forward kept)
    todo = sum(T - k for k in ks[1:])
    bar = tqdm(total=todo, desc="flow (long range)", unit="pair", disable=not progress or not todo, leave=False, dynamic_ncols=True)
    for t in range(T - 2, -1, -1):
        kept[1][t] = (_resized_flow(fwd[t], size, scale), _resized_flow(bwd[t], size, scale), _resized_mask(valid_fwd[t], size))
        for k in ks[1:]:
            h = k // 2
            if t + k >= T:
                break
            (fa, ba, va), (fb, bb, vb) = kept[h][t], kept[h][t + h]
            # frame t -> t + h -> t + k, and back
            init_f = fa + warp_sample(fb, fa)
            init_b = bb + warp_sample(ba, bb)
            flow_f = dis.calc(grey[t], grey[t + k], np.ascontiguousarray(init_f))
            flow_b = dis.calc(grey[t + k], grey[t], np.ascontiguousarray(init_b))
            valid = consistency(flow_f, flow_b) & _chained(va, vb, fa)
            if k < ks[-1]:  # the longest stride starts no other
                kept[k][t] = (flow_f.astype(np.float16), flow_b.astype(np.float16), valid)
            rows.append(_to_plate(sample_pairs(flow_f, valid, t, k, per_pair, rng), scale, (W, H)))
            bar.update(1)
        for k in ks:
            kept[k].pop(t + k, None)  # stride 2k at t - 1 and before needs frames up to t - 1 + k
    bar.close()
    return np.concatenate(rows)


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` area-filtered to `size` (width, height); itself at its own size."""
    return image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _chained(valid_a: np.ndarray, valid_b: np.ndarray, flow_a: np.ndarray) -> np.ndarray:
    """Where a match p -> p + flow_a(p) was kept (valid_a) and the next one, from where it
    lands, was too (valid_b there)."""
    return valid_a & (warp_sample(valid_b.astype(np.float32), flow_a) >= 0.5)


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask at `size`: true where most of the pixels it covers are."""
    if mask.shape[1::-1] == size:
        return mask
    return _resized(mask.astype(np.float32), size) >= 0.5


def _resized_flow(flow: np.ndarray, size: tuple[int, int], scale: np.ndarray) -> np.ndarray:
    """A flow (pixels of the plate) at `size`, in that size's pixels."""
    if flow.shape[1::-1] == size:
        return flow
    return _resized(flow.astype(np.float32), size) / scale


def _to_plate(rows: np.ndarray, scale: np.ndarray, plate: tuple[int, int]) -> np.ndarray:
    """Correspondences matched at a smaller size, in the plate's pixels: each start at the
    plate pixel nearest its matched pixel's centre, the end moved by the flow scaled up."""
    if np.all(scale == 1):
        return rows
    out = rows.copy()
    for start, end, axis in ((1, 4, 0), (2, 5, 1)):
        s = scale[axis]
        out[:, start] = np.clip(np.round((rows[:, start] + 0.5) * s - 0.5), 0, plate[axis] - 1)
        out[:, end] = out[:, start] + (rows[:, end] - rows[:, start]) * s
    return out


def groups(pairs: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """{(t, k): row indices} of correspondences from frame t to frame t + k."""
    t, t2 = pairs[:, 0].astype(np.int64), pairs[:, 3].astype(np.int64)
    key = t * (1 << 20) + (t2 - t)
    order = np.argsort(key, kind="stable")
    uniq, start = np.unique(key[order], return_index=True)
    bounds = list(start[1:]) + [len(order)]
    return {(int(u >> 20), int(u & ((1 << 20) - 1))): order[s:e] for u, s, e in zip(uniq, start, bounds)}
