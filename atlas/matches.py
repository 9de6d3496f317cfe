"""Sparse feature matches between two frames, as starts for dense flow where it lost a fast object.

DIS searches coarse to fine from zero motion (or from a neighbouring pair's): a part that
moves farther in one frame than its coarsest scale can see (a rider in the air, a fast pan
over a small object) gets the motion of what surrounds it. SIFT keypoints matched across
the pair (Lowe's ratio test, kept only when each is the other's best match) find such
parts at any displacement. Where a match found a motion that the dense flow lacks around
it, and its pixels line up better than the flow's, the flow around it restarts from the
match's displacement, and dis_flow keeps that restart only where it warps better
(preprocess._dis_pair).

Keypoints are found on frames of at most ANALYSIS_SIDE pixels a side (a plate is
area-filtered down, the matches scaled back): their number, not the plate's size, sets the
matching cost.
"""
from __future__ import annotations

import cv2
import numpy as np

MAX_FEATURES = 5000  # strongest keypoints a frame: bounds the brute-force matching
MATCH_RATIO = 0.75  # Lowe's ratio test: best distance under this share of the second best
MATCH_DISAGREE = 3.0  # px: a match this far from the flow's displacement restarts the flow around it
MATCH_REACH = 1 / 8  # of the frame's longer side: how far a match's displacement is spread
MATCH_GAIN = 0.5  # a match's patch must differ from its other end by at most this share of the flow's
MATCH_PATCH = 9  # px: the patch side that tells a match from the flow
MATCH_LOOK = 1 / 32  # of the frame's longer side: where a lost motion is looked for around a match

Features = tuple[np.ndarray, np.ndarray | None]  # keypoints [N, 2] (pixels of the frame), descriptors [N, 128]


def features(grey: np.ndarray, analysis_side: int) -> Features:
    """SIFT keypoints and descriptors of a uint8 grey frame [H, W], found at most
    `analysis_side` pixels a side and returned in the frame's pixel coordinates."""
    h, w = grey.shape
    shrink = max(1.0, max(h, w) / analysis_side)
    small = grey if shrink == 1.0 else cv2.resize(grey, (round(w / shrink), round(h / shrink)), interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES).detectAndCompute(small, None)
    points = (np.float32([k.pt for k in keypoints]).reshape(-1, 2) + 0.5) * np.float32(shrink) - 0.5  # pixel centres at integers
    return points, descriptors


def mutual_matches(a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
    """(points of a [M, 2], their matches in b [M, 2]): pairs that pass the ratio test both
    ways and are each other's best match (a repeated texture's matches fail one of these)."""
    (pa, da), (pb, db) = a, b
    if da is None or db is None or len(pa) < 2 or len(pb) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    def best(d1: np.ndarray, d2: np.ndarray) -> dict[int, int]:
        return {m.queryIdx: m.trainIdx for m, n in matcher.knnMatch(d1, d2, k=2) if m.distance < MATCH_RATIO * n.distance}

    forward, backward = best(da, db), best(db, da)
    pairs = np.array([(i, j) for i, j in forward.items() if backward.get(j) == i], np.int64).reshape(-1, 2)
    return pa[pairs[:, 0]], pb[pairs[:, 1]]


def matched_start(flow: np.ndarray, src: np.ndarray, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """A start for DIS [H, W, 2] float32 of grey frames a -> b: `flow` [H, W, 2], except
    within MATCH_REACH of the matches src -> dst [M, 2] that found a motion the flow lost
    (_lost, _better_than_flow), where each pixel takes its nearest such match's
    displacement. None where no match did (the flow has nothing to restart from)."""
    h, w = flow.shape[:2]
    flow = flow.astype(np.float32)  # this function's own copy: it becomes the start
    xi = np.clip(np.rint(src[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(src[:, 1]).astype(np.int64), 0, h - 1)
    moved = dst - src
    off = np.flatnonzero(np.linalg.norm(moved - flow[yi, xi], axis=1) > MATCH_DISAGREE)
    off = off[[_lost(flow, xi[k], yi[k], moved[k]) and _better_than_flow(a, b, src[k], moved[k], flow[yi[k], xi[k]]) for k in off]]
    if not len(off):
        return None
    seeds = np.full((h, w), 255, np.uint8)
    seeds[yi[off], xi[off]] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    match_of = np.zeros(int(labels.max()) + 1, np.int64)  # each seed pixel's label -> a match on it
    match_of[labels[yi[off], xi[off]]] = off
    near = dist < MATCH_REACH * max(h, w)
    flow[near] = moved[match_of[labels[near]]]
    return flow


def _lost(flow: np.ndarray, x: int, y: int, moved: np.ndarray) -> bool:
    """Whether no pixel within MATCH_LOOK of (x, y) has a flow within MATCH_DISAGREE of
    `moved`: the motion the match found is missing from the flow there (a keypoint on an
    object's edge matched with the background's motion is not, since the background
    beside it has that motion)."""
    h, w = flow.shape[:2]
    r = max(1, round(MATCH_LOOK * max(h, w)))
    window = flow[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
    return bool(np.linalg.norm(window - moved, axis=-1).min() > MATCH_DISAGREE)


def _better_than_flow(a: np.ndarray, b: np.ndarray, p: np.ndarray, moved: np.ndarray, flowed: np.ndarray) -> bool:
    """Whether the patch of a around p matches b at p + moved better, by MATCH_GAIN, than at
    p + flowed: descriptors match patches seen at any scale and turn, so a wrong match on
    a repeated or faint texture can pass the ratio test; its pixels do not line up."""
    size = (MATCH_PATCH, MATCH_PATCH)
    patch = lambda image, at: cv2.getRectSubPix(image, size, (float(at[0]), float(at[1]))).astype(np.float32)
    here = patch(a, p)
    err = lambda d: float(np.abs(patch(b, p + d) - here).mean())
    return err(moved) < MATCH_GAIN * err(flowed)
