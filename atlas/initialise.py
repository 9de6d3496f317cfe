"""Initial per-frame global transforms and atlas extents, from the flow.

Background: a homography per consecutive frame pair (RANSAC on the flow outside the
mask); foreground: an affine motion inside it (an object that turns, or comes closer at
an angle, foreshortens on screen, which no similarity holds, and a homography of a small,
deforming object is ill-conditioned), fitted to the mask's pixels that the background's
motion does not explain where a motion mask holds still things too (see STILL_SHARE); chained
so each frame maps into one reference frame's plane (frame 0's, unless that one cannot
hold the shot: see below).

Every pair's motion and every chained transform is checked for conditioning: a motion
between two frames must be close to rigid (no fold, little change of area, shear or
perspective), and a frame mapped into the canonical plane must stay a convex, finite,
not too distorted quadrilateral. A pair that fails falls back to a simpler motion model
(homography -> affine -> similarity -> translation). A chain that degenerates in frame
0's plane is referred to the frame nearest the shot's middle whose plane holds it (a
camera turning through the shot turns half as far from there); where no frame's does,
its outlier links (the few that depart far more than the others from the simpler model)
get the simpler motion, as few as it takes; failing that, it is rebuilt with the
simpler model for the whole shot, and the first frame where the
richer model broke (from frame 0) is reported: the camera turned too far for one atlas
with that model.

The chain is only a start: each pair's error adds up along it. A joint refinement over
the shot (a small bundle adjustment) then moves every frame's transform at once so the
layer's long-range correspondences (atlas.longrange: pixels matched 1 to 16 frames
apart) agree, measured in the frames' own pixels and robust to the ones on other motions.
Last, each layer's canonical plane is scaled to the density of the frame that sees it
closest, so its atlas keeps that frame's detail.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .longrange import groups, sample_pairs
from .model import FrameGeometry
from .preprocess import Preprocessed

MAX_POINTS = 6000
MODELS = ("homography", "affine", "similarity", "translation")
# a link's motion, frame corners mapped: area change, corner angles, perspective (w spread)
LINK_AREA = (0.6, 1.6)
LINK_ANGLE_DEG = (55.0, 125.0)
LINK_W_RATIO = 0.75
# a chained transform, frame corners mapped into the canonical plane (area relative to the reference frame's:
# an object that comes 8x closer is still one atlas)
CHAIN_AREA = (1.0 / 64.0, 64.0)
CHAIN_ANGLE_DEG = (30.0, 150.0)
CHAIN_W_RATIO = 0.25
OUTLIER_DEPARTURE = 3.0  # a link departing from its simpler model this many times more than the median link is an outlier
# joint refinement: correspondences per (frame, stride), Cauchy scale (px), rounds of reweighting
ADJUST_PER_GROUP = 256
ADJUST_SCALE_PX = 1.5
ADJUST_ROUNDS = 4
ADJUST_ITERS = 60
# A motion mask (the bootstrap's guess; a given or SAM mask is taken to be the object) holds what
# moved against the camera, and may hold what its clean-up swept in with it: smoke, a video screen,
# the still ground between an object's parts. Where the background's chain carries at least
# STILL_SHARE of the mask's flow to within OBJECT_PX, a foreground's initial motion is fitted to the
# rest: the pixels it does not carry to within OBJECT_PX (consecutive frames) or OBJECT_PX_LONG
# (long-range correspondences, whose chain has been refined jointly), in each frame where those are
# at least OBJECT_SHARE of the mask's (elsewhere the object moves with the camera). Otherwise RANSAC
# takes the motion of the larger, still part.
STILL_SHARE = 0.1
OBJECT_PX = 1.0
OBJECT_PX_LONG = 2.0
OBJECT_SHARE = 0.25


@dataclass
class Chain:
    """Transforms [T, 3, 3] of one layer (frame t's normalised coordinates -> the plane of
    frame `ref`, the canonical plane), the motion model they use, and the first frame
    where a richer model broke."""

    transforms: np.ndarray
    model: str
    break_frame: int | None = None
    broken_model: str | None = None
    ref: int = 0


def _corners(geom: FrameGeometry) -> np.ndarray:
    w, h = geom.width / (2 * geom.scale), geom.height / (2 * geom.scale)
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]])


def _area_ratio(p: np.ndarray, geom: FrameGeometry) -> float:
    """Area of a quad [4, 2] of normalised coordinates over the frame's."""
    c = _corners(geom)
    return 0.5 * abs(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])) / (4 * c[1, 0] * c[2, 1])


def _mapped_corners(m: np.ndarray, geom: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The frame's corners mapped by m: (points [4, 2], their homogeneous w [4])."""
    ph = np.c_[_corners(geom), np.ones(4)] @ m.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return ph[:, :2] / ph[:, 2:], ph[:, 2]


def well_conditioned(m: np.ndarray, geom: FrameGeometry, area: tuple[float, float], angle: tuple[float, float], w_ratio: float,
                     unit_area: float = 1.0) -> bool:
    """Whether the frame's corners mapped by m form a convex quad with finite, same-sign w
    (min/max at least `w_ratio`), an area ratio in `area` (times `unit_area`) and corner
    angles in `angle`."""
    if not np.all(np.isfinite(m)):
        return False
    p, w = _mapped_corners(m, geom)
    if not (np.all(w > 0) or np.all(w < 0)) or np.abs(w).min() / np.abs(w).max() < w_ratio:
        return False
    edges = np.roll(p, -1, axis=0) - p
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (np.all(cross > 0) or np.all(cross < 0)):
        return False
    ratio = _area_ratio(p, geom) / unit_area
    if not area[0] <= ratio <= area[1]:
        return False
    prev, nxt = -np.roll(edges, 1, axis=0), edges
    cos = (prev * nxt).sum(1) / (np.linalg.norm(prev, axis=1) * np.linalg.norm(nxt, axis=1) + 1e-12)
    deg = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return bool(np.all((deg >= angle[0]) & (deg <= angle[1])))


def _fit(a: np.ndarray, b: np.ndarray, kind: str, thr: float) -> np.ndarray | None:
    """3x3 motion a -> b by RANSAC for one motion model."""
    if kind == "translation":
        d = np.median(b - a, axis=0)
        return np.array([[1.0, 0, d[0]], [0, 1.0, d[1]], [0, 0, 1.0]])
    if kind == "homography":
        m, _ = cv2.findHomography(a, b, cv2.RANSAC, thr, maxIters=2000, confidence=0.995)
        return m
    est = cv2.estimateAffine2D if kind == "affine" else cv2.estimateAffinePartial2D
    m2, _ = est(a, b, method=cv2.RANSAC, ransacReprojThreshold=thr, maxIters=2000)
    return None if m2 is None else np.vstack([m2, [0.0, 0.0, 1.0]])


def _normalised(px: np.ndarray, geom: FrameGeometry) -> np.ndarray:
    """Pixel coordinates [N, 2] -> the normalised coordinates transforms act on (the
    NumPy twin of FrameGeometry.normalise)."""
    return (px + 0.5 - np.array([geom.width / 2, geom.height / 2])) / geom.scale


def link_motion(src: np.ndarray, dst: np.ndarray, geom: FrameGeometry, models: tuple[str, ...], rng: np.random.Generator) -> np.ndarray | None:
    """Motion of normalised coordinates between two frames from pixel correspondences
    src -> dst [N, 2]: the first of `models` that RANSAC fits well conditioned, else None."""
    if len(src) < 12:
        return None
    if len(src) > MAX_POINTS:
        pick = rng.choice(len(src), MAX_POINTS, replace=False)
        src, dst = src[pick], dst[pick]
    a, b = _normalised(src, geom).astype(np.float32), _normalised(dst, geom).astype(np.float32)
    for kind in models:
        m = _fit(a, b, kind, 1.0 / geom.scale)
        if m is not None and well_conditioned(m, geom, LINK_AREA, LINK_ANGLE_DEG, LINK_W_RATIO):
            return m
    return None


def _select(pairs: np.ndarray, masks: np.ndarray, use_mask: str) -> np.ndarray:
    """Correspondences whose both ends lie in the layer (outside/inside the mask, or all)."""
    if use_mask == "all":
        return np.ones(len(pairs), bool)
    h, w = masks.shape[1:]
    t, t2 = pairs[:, 0].astype(int), pairs[:, 3].astype(int)
    x, y = pairs[:, 1].astype(int), pairs[:, 2].astype(int)
    x2, y2 = np.clip(np.round(pairs[:, 4]), 0, w - 1).astype(int), np.clip(np.round(pairs[:, 5]), 0, h - 1).astype(int)
    inside = (masks[t, y, x] > 0.5) & (masks[t2, y2, x2] > 0.5)
    outside = (masks[t, y, x] <= 0.5) & (masks[t2, y2, x2] <= 0.5)
    return inside if use_mask == "inside" else outside


def _layer_pairs(pre: Preprocessed, use_mask: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Per consecutive frame pair, correspondences [M, 6] of the layer from the dense flow:
    up to MAX_POINTS of its valid pixels."""
    fwd, valid, masks = pre.flow_fwd.numpy(), pre.valid_fwd.numpy(), pre.masks.numpy()
    rows = []
    for t in range(len(fwd)):
        m = masks[t] > 0.5
        rows.append(sample_pairs(fwd[t], valid[t] & {"inside": m, "outside": ~m}.get(use_mask, True), t, 1, MAX_POINTS, rng))
    return rows


def camera_explained(pairs: np.ndarray, camera: np.ndarray, geom: FrameGeometry, px: float) -> np.ndarray:
    """[M] bool: correspondences [M, 6] that the camera's transforms [T, 3, 3] (a background
    chain) carry to within `px` pixels."""
    a, b = _normalised(pairs[:, 1:3], geom), _normalised(pairs[:, 4:6], geom)
    t, t2 = pairs[:, 0].astype(int), pairs[:, 3].astype(int)
    canonical = np.einsum("nij,nj->ni", camera[t], np.concatenate([a, np.ones((len(a), 1))], 1))
    p = np.einsum("nij,nj->ni", np.linalg.inv(camera)[t2], canonical)
    return np.linalg.norm(p[:, :2] / p[:, 2:] - b, axis=1) * geom.scale < px


def object_pairs(pairs: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """A foreground's correspondences [M, 6] less those the camera `explained` [M] (see
    STILL_SHARE), frame by frame: where fewer than OBJECT_SHARE of a frame's remain, the
    object moves with the camera there and that frame's are all kept."""
    keep = ~explained
    t = pairs[:, 0].astype(int)
    with_camera = np.bincount(t, keep) < np.maximum(12, OBJECT_SHARE * np.bincount(t))
    return pairs[keep | with_camera[t]]


def _chain(links: dict[int, np.ndarray], num_frames: int) -> np.ndarray:
    """Transforms from the pair motions {t: motion t -> t + 1}; a pair without a reliable
    motion reuses the previous pair's."""
    out, last = [np.eye(3)], np.eye(3)
    for t in range(num_frames - 1):
        last = links.get(t, last)
        out.append(out[-1] @ np.linalg.inv(last))
    arr = np.stack(out)
    return arr / arr[:, 2:3, 2:3]


def first_degenerate(transforms: np.ndarray, geom: FrameGeometry, ref: int = 0) -> int | None:
    """The first frame whose transform into the canonical plane is not well conditioned
    (areas relative to the reference frame's, so a canonical plane at any density is judged alike)."""
    unit = _area_ratio(_mapped_corners(transforms[ref], geom)[0], geom) if np.all(np.isfinite(transforms[ref])) else 1.0
    for t, h in enumerate(transforms):
        if not (unit > 0 and well_conditioned(h, geom, CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO, unit)):
            return t
    return None


def rereferenced(transforms: np.ndarray, ref: int) -> np.ndarray:
    """The chain's transforms into frame `ref`'s plane instead of frame 0's."""
    out = np.linalg.inv(transforms[ref]) @ transforms
    return out / out[:, 2:3, 2:3]


def steadiest_reference(transforms: np.ndarray, geom: FrameGeometry) -> int | None:
    """A reference frame whose plane holds every frame well conditioned: frame 0 when it
    does, else the frame nearest the middle of the shot that does (a camera that turns
    through the shot turns half as far from its middle), None when no frame does."""
    if first_degenerate(transforms, geom) is None:
        return 0
    middle = (len(transforms) - 1) / 2
    for ref in sorted(range(1, len(transforms)), key=lambda r: (abs(r - middle), r)):
        if np.all(np.isfinite(transforms[ref])) and first_degenerate(rereferenced(transforms, ref), geom, ref) is None:
            return ref
    return None


def at_sharpest_view(chain: Chain, geom: FrameGeometry, shown: np.ndarray) -> Chain:
    """The chain with its canonical plane scaled so that one unit of it is one pixel of the
    frame (among those where the layer is `shown` [T] bool) that sees it largest: the atlas
    then holds the detail of the closest view, not of frame 0 (an object that comes
    towards the camera would otherwise be fitted from a blurred atlas)."""
    frames = np.nonzero(shown)[0] if shown.any() else np.arange(len(chain.transforms))
    magnification = max(_area_ratio(_mapped_corners(chain.transforms[t], geom)[0], geom) ** -0.5 for t in frames)
    scaled = np.diag([magnification, magnification, 1.0]) @ chain.transforms
    return Chain(scaled, chain.model, chain.break_frame, chain.broken_model, chain.ref)


def _links(per_pair: dict[int, np.ndarray], geom: FrameGeometry, models: tuple[str, ...], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """{t: motion t -> t + 1} of the pairs {t: correspondences} with a reliable one (link_motion)."""
    links = {}
    for t, pairs in per_pair.items():
        m = link_motion(pairs[:, 1:3], pairs[:, 4:6], geom, models, rng)
        if m is not None:
            links[t] = m
    return links


def _held(transforms: np.ndarray, geom: FrameGeometry) -> tuple[np.ndarray, int] | None:
    """(transforms into the reference frame's plane, reference) of a chain, or None when
    no reference frame's plane holds it."""
    ref = steadiest_reference(transforms, geom)
    return None if ref is None else (rereferenced(transforms, ref), ref)


def _held_with_outlier_links_simpler(links: dict[int, np.ndarray], per_pair: dict[int, np.ndarray], geom: FrameGeometry,
                                     simpler: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """The chain held by giving the fewest outlier links a simpler motion, or None.

    A few pairs' motions can be wrong while each passes the link checks (motion blur, an
    object filling most of the frame), and their perspective then breaks the chain for the
    whole shot. Outliers are links that depart from their simpler model's fit (frame
    corners, pixels) by more than OUTLIER_DEPARTURE times the median link's; the most
    departing are simplified first (as many as the chain needs, found by bisection). A
    camera that really turns too far departs alike in every link: no outliers, and the
    whole shot falls back to the simpler model instead. Under a pixel, no link is an outlier."""
    plain = _links({t: per_pair[t] for t in links}, geom, simpler, rng)
    if not plain:
        return None
    departure = {t: float(np.abs(_mapped_corners(links[t], geom)[0] - _mapped_corners(m, geom)[0]).max()) * geom.scale for t, m in plain.items()}
    typical = float(np.median(list(departure.values())))
    order = sorted((t for t in plain if departure[t] > max(OUTLIER_DEPARTURE * typical, 1.0)), key=lambda t: -departure[t])
    best, lo, hi = None, 1, len(order)
    while lo <= hi:
        k = (lo + hi) // 2
        held = _held(_chain({**links, **{t: plain[t] for t in order[:k]}}, geom.num_frames), geom)
        if held is not None:
            best, hi = held, k - 1
        else:
            lo = k + 1
    return best


def robust_chain(pre: Preprocessed, geom: FrameGeometry, kind: str, use_mask: str, seed: int = 0) -> Chain:
    """Transforms of one layer with motion model `kind` (or a simpler one where `kind`
    degenerates); see the module docstring."""
    rng = np.random.default_rng(seed)
    return _chained(_layer_pairs(pre, use_mask, rng), geom, kind, rng)


def _foreground_chain(pre: Preprocessed, geom: FrameGeometry, camera: np.ndarray, seed: int = 0) -> tuple[Chain, bool]:
    """(robust_chain of the foreground inside the mask, whether the mask swept in still
    things): where it did, the chain is fitted to the pixels the background's chained
    transforms `camera` do not explain (see STILL_SHARE)."""
    rng = np.random.default_rng(seed)
    rows = _layer_pairs(pre, "inside", rng)
    explained = [camera_explained(r, camera, geom, OBJECT_PX) for r in rows]
    still = sum(int(e.sum()) for e in explained) / max(sum(len(e) for e in explained), 1)
    swept_in = pre.mask_source == "motion" and still >= STILL_SHARE
    if swept_in:
        rows = [object_pairs(r, e) for r, e in zip(rows, explained)]
    return _chained(rows, geom, "affine", rng), swept_in


def _chained(rows: list[np.ndarray], geom: FrameGeometry, kind: str, rng: np.random.Generator) -> Chain:
    """robust_chain from each consecutive pair's correspondences."""
    per_pair = dict(enumerate(rows))
    models = MODELS[MODELS.index(kind):]
    broke: tuple[int, str] | None = None
    for i, model in enumerate(models):
        links = _links(per_pair, geom, models[i:], rng)
        transforms = _chain(links, geom.num_frames)
        held = _held(transforms, geom)
        if held is None and i + 1 < len(models):
            held = _held_with_outlier_links_simpler(links, per_pair, geom, models[i + 1:], rng)
        if held is not None or model == models[-1]:
            transforms, ref = held or (transforms, 0)
            return Chain(transforms, model, *(broke or (None, None)), ref)
        broke = broke or (first_degenerate(transforms, geom), model)
    raise AssertionError("unreachable")


def _to_matrices(p: torch.Tensor, model: str) -> torch.Tensor:
    """[N, 3, 3] transforms from their free parameters [N, d] under a motion model."""
    n = p.shape[0]
    one, zero = torch.ones(n, dtype=p.dtype), torch.zeros(n, dtype=p.dtype)
    if model == "homography":
        rows = [*p.unbind(1), one]
    elif model == "affine":
        rows = [*p.unbind(1), zero, zero, one]
    elif model == "similarity":
        a, b, tx, ty = p.unbind(1)
        rows = [a, -b, tx, b, a, ty, zero, zero, one]
    else:
        tx, ty = p.unbind(1)
        rows = [one, zero, tx, zero, one, ty, zero, zero, one]
    return torch.stack(rows, 1).reshape(n, 3, 3)


def _to_params(m: np.ndarray, model: str) -> np.ndarray:
    """The free parameters [N, d] of transforms [N, 3, 3] (normalised to m[2, 2] = 1)."""
    m = m / m[:, 2:3, 2:3]
    if model == "homography":
        return m.reshape(-1, 9)[:, :8]
    if model == "affine":
        return m[:, :2].reshape(-1, 6)
    if model == "similarity":
        return np.stack([(m[:, 0, 0] + m[:, 1, 1]) / 2, (m[:, 1, 0] - m[:, 0, 1]) / 2, m[:, 0, 2], m[:, 1, 2]], 1)
    return m[:, :2, 2]


def _project(m: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    ph = torch.einsum("nij,nj->ni", m, torch.cat([q, torch.ones_like(q[:, :1])], 1))
    return ph[:, :2] / ph[:, 2:]


def adjust(chain: Chain, pairs: np.ndarray, masks: np.ndarray, geom: FrameGeometry, use_mask: str, seed: int = 0,
           camera: np.ndarray | None = None) -> Chain:
    """The chain with every frame's transform (the reference frame's held) refined jointly so the
    layer's correspondences [M, 6] agree: symmetric transfer error in pixels, Cauchy-
    reweighted, L-BFGS, in the chain's motion model. Returned unchanged when there is
    nothing longer than consecutive pairs to learn from or the result is degenerate.
    With `camera` (the background's transforms), a foreground's correspondences that it
    explains are left out (object_pairs)."""
    pairs = pairs[_select(pairs, masks, use_mask)]
    if camera is not None:
        pairs = object_pairs(pairs, camera_explained(pairs, camera, geom, OBJECT_PX_LONG))
    if geom.num_frames < 3 or not np.any(pairs[:, 3] - pairs[:, 0] > 1):
        return chain
    rng = np.random.default_rng(seed)
    rows = [r if len(r) <= ADJUST_PER_GROUP else rng.choice(r, ADJUST_PER_GROUP, replace=False) for r in groups(pairs).values()]
    pairs = pairs[np.sort(np.concatenate(rows))]
    qa, qb = (torch.from_numpy(_normalised(pairs[:, c : c + 2], geom)) for c in (1, 4))
    ta, tb = (torch.from_numpy(pairs[:, c].astype(np.int64)) for c in (0, 3))
    ref = chain.ref
    held = torch.from_numpy(_to_params(np.eye(3)[None], chain.model))
    params = _to_params(chain.transforms.astype(np.float64), chain.model)
    free = torch.from_numpy(np.delete(params, ref, axis=0)).requires_grad_(True)
    every = lambda: torch.cat([free[:ref], held, free[ref:]])

    def error() -> torch.Tensor:  # [M] squared transfer error, both ways, in pixels^2
        m = _to_matrices(every(), chain.model)
        inv = torch.linalg.inv(m)
        e = torch.cat([_project(inv[tb] @ m[ta], qa) - qb, _project(inv[ta] @ m[tb], qb) - qa], 1) * geom.scale
        return e.pow(2).sum(1)

    opt = torch.optim.LBFGS([free], lr=1.0, max_iter=ADJUST_ITERS, history_size=20, line_search_fn="strong_wolfe")
    for _ in range(ADJUST_ROUNDS):
        with torch.no_grad():
            weight = 1.0 / (1.0 + error() / (2 * ADJUST_SCALE_PX**2))

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (weight * error()).sum() / weight.sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        m = _to_matrices(every(), chain.model).numpy()
    m = m / m[:, 2:3, 2:3]
    if not np.all(np.isfinite(m)) or first_degenerate(m, geom, ref) is not None:
        return chain
    return Chain(m, chain.model, chain.break_frame, chain.broken_model, ref)


def chain_transforms(pre: Preprocessed, geom: FrameGeometry, kind: str, use_mask: str, seed: int = 0) -> np.ndarray:
    """[T, 3, 3] transforms taking frame t's normalised coords into the canonical plane
    (`use_mask`: "outside" for the background, "inside" for a foreground, or "all")."""
    return robust_chain(pre, geom, kind, use_mask, seed).transforms


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
        q = _normalised(p, geom)
        pts.append(_apply(transforms[t], q))
    if not pts:  # no mask anywhere: cover the whole frame
        return uv_range(transforms, geom, None, margin)
    allp = np.concatenate(pts)
    lo, hi = allp.min(0), allp.max(0)
    pad = (hi - lo) * margin + 2.0 / geom.scale
    return lo - pad, hi + pad


def initial_layout(pre: Preprocessed, geom: FrameGeometry, num_fg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Chain]]:
    """Transforms [layers, T, 3, 3], uv_lo [layers, 2], uv_hi [layers, 2] (background first),
    and each layer's :class:`Chain` (its motion model and where a richer one broke)."""
    masks = pre.masks.numpy()
    has_fg = num_fg > 0 and masks.sum() > 0
    pairs = pre.pairs.numpy()
    bg_mask = "outside" if has_fg else "all"
    bg_chained = robust_chain(pre, geom, "homography", bg_mask, seed)
    bg = adjust(bg_chained, pairs, masks, geom, bg_mask, seed)
    bg = at_sharpest_view(bg, geom, np.ones(geom.num_frames, bool))
    chains, los, his = [bg], [], []
    lo, hi = uv_range(bg.transforms, geom, None, 0.02)
    los.append(lo), his.append(hi)
    if has_fg:
        fg, swept_in = _foreground_chain(pre, geom, bg_chained.transforms, seed)
        fg = adjust(fg, pairs, masks, geom, "inside", seed, bg.transforms if swept_in else None)
        fg = at_sharpest_view(fg, geom, masks.reshape(geom.num_frames, -1).max(1) > 0.5)
    else:
        fg = bg
    for _ in range(num_fg):
        lo, hi = uv_range(fg.transforms, geom, masks if has_fg else None, 0.15)
        chains.append(fg), los.append(lo), his.append(hi)
    f = lambda xs: torch.from_numpy(np.stack(xs)).float()
    return f([c.transforms for c in chains]), f(los), f(his), chains
