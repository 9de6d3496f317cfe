"""Scoring point tracks with the TAP-Vid protocol, and the baselines they are scored against.

TAP-Vid (Doersch et al. 2022, section 4), "query first": each ground-truth track is queried
at its first visible frame and scored on every later frame, in coordinates scaled to
256x256:
  * delta_avg: the share of visible ground-truth points predicted within 1, 2, 4, 8 and
    16 px, averaged over the thresholds;
  * occlusion accuracy (OA): the share of points whose visible/hidden call is right;
  * average Jaccard (AJ): per threshold, true positives / (ground-truth visible + false
    positives), where a prediction marked visible is a false positive when the point is
    hidden or farther than the threshold; averaged over the thresholds.
Sums run over every track and frame of a clip (a clip's score, not a mean of tracks').
"""
from __future__ import annotations

import numpy as np

from .track import bilinear

THRESHOLDS = (1, 2, 4, 8, 16)
SCALE_TO = 256.0


def query_first(occluded: np.ndarray) -> np.ndarray:
    """[N] each track's first visible frame (tracks never visible are dropped by the caller)."""
    return np.argmax(~occluded, axis=1)


def tapvid_metrics(gt: np.ndarray, gt_occluded: np.ndarray, pred: np.ndarray, pred_occluded: np.ndarray,
                   size: tuple[float, float]) -> dict[str, float]:
    """TAP-Vid query-first scores (in %) of predictions [N, T, 2] / [N, T] against the ground
    truth, all in pixels of frames of `size` (width, height)."""
    scale = np.array([SCALE_TO / size[0], SCALE_TO / size[1]])
    q = query_first(gt_occluded)
    T = gt.shape[1]
    evaluated = np.arange(T)[None, :] > q[:, None]
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    dist2 = (((pred - gt) * scale) ** 2).sum(-1)
    within_all, jaccard = [], []
    for thr in THRESHOLDS:
        within = dist2 < thr * thr
        within_all.append((within & visible & evaluated).sum() / max((visible & evaluated).sum(), 1))
        tp = (within & pred_visible & visible & evaluated).sum()
        fp = (pred_visible & (~visible | ~within) & evaluated).sum()
        jaccard.append(tp / max((visible & evaluated).sum() + fp, 1))
    oa = ((pred_visible == visible) & evaluated).sum() / max(evaluated.sum(), 1)
    return {"delta_avg": 100.0 * float(np.mean(within_all)), "aj": 100.0 * float(np.mean(jaccard)), "oa": 100.0 * float(oa)}


def delta_avg_difference(gt: np.ndarray, gt_occluded: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                         size: tuple[float, float], draws: int = 1000, level: float = 0.9, seed: int = 0) -> tuple[float, float, float]:
    """delta_avg of predictions a minus that of predictions b ([N, T, 2] each, same tracks),
    and its `level` bootstrap interval over the tracks: (difference, low, high).

    A clip's score pools a few dozen tracks, and one lost track moves it by points; the
    tracks are resampled with replacement (the same draw for a and b, so what they share
    cancels), which says whether a gap between two trackers is more than the clip's
    choice of points."""
    hidden = np.zeros(gt_occluded.shape, bool)  # delta_avg does not read the predicted visibility
    score = lambda pred, rows: tapvid_metrics(gt[rows], gt_occluded[rows], pred[rows], hidden[rows], size)["delta_avg"]
    every = np.arange(len(gt))
    rng = np.random.default_rng(seed)
    diffs = [score(pred_a, rows) - score(pred_b, rows) for rows in rng.integers(0, len(gt), (draws, len(gt)))]
    lo, hi = np.quantile(diffs, [(1.0 - level) / 2, (1.0 + level) / 2])
    return score(pred_a, every) - score(pred_b, every), float(lo), float(hi)


def chained_flow_tracks(flow_fwd: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The chained-flow baseline: each query (x, y, t) [N, 3] moved frame to frame by the
    forward flow [T-1, H, W, 2] (bilinear), from its frame on; earlier frames hold the
    query. Returns positions [N, T, 2]; it never calls a point hidden."""
    T = flow_fwd.shape[0] + 1
    pos = np.repeat(queries[:, None, :2].astype(np.float64), T, axis=1)
    start = queries[:, 2].astype(int)
    for t in range(T - 1):
        moving = start <= t
        if moving.any():
            pos[moving, t + 1] = pos[moving, t] + bilinear(flow_fwd, np.full(moving.sum(), t), pos[moving, t])
    return pos
