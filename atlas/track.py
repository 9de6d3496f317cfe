"""Point tracks through the atlas: a query pixel's atlas address, found again in every frame.

A query (x, y, t) takes the (u, v) of one layer there and, in every frame t', solves
mapping(x', y', t') = (u, v) for (x', y'):
  * seed: the layer's global transform inverted in closed form (the residual is small
    where the mapping is healthy); where that does not converge, the nearest sample of a
    coarse grid of the frame's uv map;
  * Newton steps on the full mapping (global transform + residual), its 2x2 Jacobian by
    central differences of a quarter pixel (the hash grid is piecewise linear, so a
    difference sees more of it than the local derivative does), steps capped in length.

The layer a query follows (unless one is asked for) is the one with the largest
compositing weight at the query, as checked against the nearest frames (checked_weights:
a part of an object the fit mislaid in the query's frame alone still counts as the
object), except where the fit's optical flow says otherwise: the
query is carried by the flow FLOW_CHECK_FRAMES frames each way (as far as the flow is
forward-backward consistent), and when another layer's track stays with it and the
weighted layer's departs by more than SWITCH_RATIO times as far (and SWITCH_FRAC of the
frame), the point moves with that other layer. A motion bootstrap that missed an object in
a few frames leaves it painted into the background there; its pixels then belong to the
foreground's motion all the same. Only frames where the weighted layer's track shows the
point count: once an object in front hides it, the flow there follows the object (next to
a moving edge the consistency check passes it on), which says nothing about the point.
Where that layer hides it in every frame the flow reaches, its opacity at the query is the
odd one out (the missed object above) and all those frames count.

Coordinates are continuous pixels of the fitted frames: the top-left pixel spans 0..1 in
x and y (so its centre is (0.5, 0.5)). A point is *visible* in a frame when it lies inside
the frame, the solve converged (within MAX_RESIDUAL_PX atlas pixels of the query's (u, v))
and the layer's compositing weight there is at least VISIBLE_WEIGHT; its *confidence* is
that weight times exp(-residual in atlas pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .errors import AtlasInputError
from .model import FrameGeometry, LayeredAtlas, LayerMapping

VISIBLE_WEIGHT = 0.5
MAX_RESIDUAL_PX = 1.0  # atlas pixels: a solve that ends farther from (u, v) found no pre-image
NEWTON_STEPS = 8
MAX_STEP_PX = 32.0
DIFF_PX = 0.25
GRID_SAMPLES = 96  # coarse uv grid for seeds: this many samples along the frame's long side
CHUNK = 1 << 16
FLOW_CHECK_FRAMES = 8
SWITCH_RATIO = 2.0
SWITCH_FRAC = 0.005  # of the frame's longer side (2 px at 427x240)
NEARBY_FRAMES = 4


@dataclass
class Tracks:
    """Tracks of N query points through the T fitted frames."""

    queries: np.ndarray  # [N, 3] (x, y, t) as asked, continuous pixels of the fitted frames
    layers: list[str]  # [N] the layer each query follows
    positions: np.ndarray  # [N, T, 2] float32 (x, y), continuous pixels
    visible: np.ndarray  # [N, T] bool
    confidence: np.ndarray  # [N, T] float32 in [0, 1]

    def scaled(self, sx: float, sy: float) -> "Tracks":
        """The same tracks in pixels scaled by (sx, sy) (e.g. to the source's resolution)."""
        s = np.array([sx, sy], np.float32)
        q = self.queries.copy()
        q[:, :2] *= s
        return Tracks(q, list(self.layers), self.positions * s, self.visible.copy(), self.confidence.copy())


class FlowField(NamedTuple):
    """The fit's optical flow between consecutive frames [T-1, H, W, 2] and where it is
    forward-backward consistent [T-1, H, W] (a bundle's cache)."""

    fwd: np.ndarray
    bwd: np.ndarray
    valid_fwd: np.ndarray
    valid_bwd: np.ndarray


def bilinear(field: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """field [T, H, W, C] of frames t [N] at continuous pixel positions p [N, 2] (pixel
    centres at +0.5), bilinear, clamped to the border, as float64 (the field may be half
    precision or memory-mapped: only the four neighbours of each point are read)."""
    h, w = field.shape[1:3]
    x = np.clip(p[:, 0] - 0.5, 0, w - 1)
    y = np.clip(p[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    at = lambda yy, xx: field[t, yy, xx].astype(np.float64)
    return at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x1) * fx * (1 - fy) + at(y1, x0) * (1 - fx) * fy + at(y1, x1) * fx * fy


def carried_by_flow(flow: FlowField, queries: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries (x, y, t) [N, 3] carried frame to frame by the optical flow (forward and
    backward), up to `frames` frames each way, while it is reliable (forward-backward
    consistent where the point stands): positions [N, T, 2] and where they are reached
    [N, T] (within reach, inside the frame, reliable flow all the way; not the query's own frame)."""
    n, T = len(queries), flow.fwd.shape[0] + 1
    h, w = flow.fwd.shape[1:3]
    pos = np.zeros((n, T, 2))
    reached = np.zeros((n, T), bool)
    rows = np.arange(n)
    for step, field, valid, offset in ((1, flow.fwd, flow.valid_fwd, 0), (-1, flow.bwd, flow.valid_bwd, -1)):
        p, t, alive = queries[:, :2].astype(np.float64), queries[:, 2].astype(int), np.ones(n, bool)
        for _ in range(frames):
            alive &= (t + step >= 0) & (t + step < T)
            sel = rows[alive]
            px = np.clip(p[sel].astype(int), 0, [w - 1, h - 1])
            alive[sel] &= valid[t[sel] + offset, px[:, 1], px[:, 0]]
            if not alive.any():
                break
            sel = rows[alive]
            p[sel] = p[sel] + bilinear(field, t[sel] + offset, p[sel])
            t[sel] += step
            alive[sel] &= (p[sel, 0] >= 0) & (p[sel, 0] <= w) & (p[sel, 1] >= 0) & (p[sel, 1] <= h)
            sel = rows[alive]
            pos[sel, t[sel]], reached[sel, t[sel]] = p[sel], True
    return pos, reached


def _switched_by_flow(chosen: np.ndarray, positions: np.ndarray, carried: np.ndarray, reached: np.ndarray, scale: float) -> np.ndarray:
    """The layer each query moves with: `chosen` [N], unless the flow-carried positions
    [N, T, 2] (in the frames `reached` [N, T]) stay with another layer's track (positions
    [layers, N, T, 2]) and depart from the chosen one's by SWITCH_RATIO times as far and
    SWITCH_FRAC * scale more."""
    dist = np.linalg.norm(positions - carried[None], axis=-1)  # [layers, N, T]
    count = reached.sum(1)
    mean = (dist * reached[None]).sum(-1) / np.maximum(count, 1)[None]  # [layers, N]
    best = mean.argmin(0)
    rows = np.arange(len(best))
    mine, theirs = mean[chosen, rows], mean[best, rows]
    switch = (count > 0) & (mine > SWITCH_RATIO * theirs) & (mine - theirs > SWITCH_FRAC * scale)
    return np.where(switch, best, chosen)


def _layer_uv(mapping: LayerMapping, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """uv [N, 2] of continuous pixel positions p [N, 2] in frames t [N], chunked."""
    return torch.cat([mapping(p[s : s + CHUNK] - 0.5, t[s : s + CHUNK]) for s in range(0, len(p), CHUNK)])


def _global_inverse(mapping: LayerMapping, uv: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Continuous pixels whose global transform in frame t reaches uv (the residual ignored)."""
    canon = mapping.uv_lo + uv * (mapping.uv_hi - mapping.uv_lo)
    h_inv = torch.linalg.inv(mapping.transforms.detach().double())[t].float()
    q = torch.einsum("nij,nj->ni", h_inv, torch.cat([canon, torch.ones_like(canon[:, :1])], dim=-1))
    q = q[:, :2] / torch.where(q[:, 2:].abs() < 1e-9, torch.full_like(q[:, 2:], 1e-9), q[:, 2:])
    return mapping.geom.pixels(q) + 0.5  # continuous positions: a pixel's centre is at +0.5


def _newton(mapping: LayerMapping, p: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine p [N, 2] towards mapping(p, t) = target; returns (p, residual in atlas px)."""
    px = mapping.pixels_per_uv.detach()
    h = DIFF_PX
    offsets = torch.tensor([[0.0, 0.0], [h, 0.0], [-h, 0.0], [0.0, h], [0.0, -h]])
    n = len(p)
    for _ in range(NEWTON_STEPS):
        probe = (p[None] + offsets[:, None]).reshape(-1, 2)
        uv = _layer_uv(mapping, probe, t.repeat(5)).reshape(5, n, 2) * px
        f = uv[0] - target * px
        jac = torch.stack([(uv[1] - uv[2]) / (2 * h), (uv[3] - uv[4]) / (2 * h)], dim=-1)  # [N, 2 (uv), 2 (xy)]
        det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
        ok = det.abs() > 1e-8
        inv = torch.stack([torch.stack([jac[:, 1, 1], -jac[:, 0, 1]], -1), torch.stack([-jac[:, 1, 0], jac[:, 0, 0]], -1)], 1)
        step = torch.einsum("nij,nj->ni", inv, f) / torch.where(ok, det, torch.ones_like(det))[:, None]
        step = torch.where(ok[:, None], step, torch.zeros_like(step))
        length = step.norm(dim=-1, keepdim=True)
        p = p - step * (MAX_STEP_PX / length.clamp_min(MAX_STEP_PX))
    res = ((_layer_uv(mapping, p, t) - target) * px).norm(dim=-1)
    return p, res


def _grid_seeds(mapping: LayerMapping, targets: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """For each (target uv, frame), the sample of a coarse pixel grid of that frame whose uv
    is nearest: a seed that does not rely on the global transform."""
    g = mapping.geom
    step = max(g.width, g.height) / GRID_SAMPLES
    xs = torch.arange(step / 2, g.width, step)
    ys = torch.arange(step / 2, g.height, step)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    seeds = torch.empty(len(targets), 2)
    px = mapping.pixels_per_uv.detach()
    for t in frames.unique().tolist():
        sel = (frames == t).nonzero().squeeze(1)
        uv = _layer_uv(mapping, grid, torch.full((len(grid),), t, dtype=torch.long)) * px
        nearest = torch.cdist(targets[sel] * px, uv).argmin(dim=1)
        seeds[sel] = grid[nearest]
    return seeds


def _solve(mapping: LayerMapping, qp: torch.Tensor, qt: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [n, F, 2] and residuals [n, F] (atlas px) of queries qp [n, 2] in frames qt [n]
    on one layer, in each of `frames` [F]."""
    n, f = len(qp), len(frames)
    target = _layer_uv(mapping, qp, qt).repeat_interleave(f, dim=0)
    t_all = frames.repeat(n)
    p, res = _newton(mapping, _global_inverse(mapping, target, t_all), t_all, target)
    retry = (res > MAX_RESIDUAL_PX).nonzero().squeeze(1)
    if len(retry):
        p2, res2 = _newton(mapping, _grid_seeds(mapping, target[retry], t_all[retry]), t_all[retry], target[retry])
        better = res2 < res[retry]
        p[retry[better]], res[retry[better]] = p2[better], res2[better]
    return p.reshape(n, f, 2), res.reshape(n, f)


def _weight_along(model: LayeredAtlas, positions: torch.Tensor, layers: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Compositing weight [n, F] of each track's layer `layers` [n] along its positions
    [n, F, 2] in `frames` [F] (default: every frame)."""
    n, f = positions.shape[:2]
    t_all = (torch.arange(f) if frames is None else frames).repeat(n)
    flat = positions.reshape(-1, 2)
    w_all = torch.cat([model.layer_weights(model.alpha(flat[s : s + CHUNK] - 0.5, t_all[s : s + CHUNK]))
                       for s in range(0, len(flat), CHUNK)])
    return w_all.gather(1, layers.repeat_interleave(f)[:, None]).reshape(n, f)


def _found(positions: torch.Tensor, residual: torch.Tensor, geom: FrameGeometry) -> torch.Tensor:
    """Where solved positions [..., 2] lie inside the frame and their solve converged (residual [...])."""
    x, y = positions[..., 0], positions[..., 1]
    return (x >= 0) & (x <= geom.width) & (y >= 0) & (y <= geom.height) & (residual <= MAX_RESIDUAL_PX)


def _weight_nearby(model: LayeredAtlas, pixels: torch.Tensor, t: int, layer: int, frames: list[int]) -> torch.Tensor:
    """Layer `layer`'s compositing weight [N, F] at the points of `frames` [F] where the
    continuous pixels `pixels` [N, 2] of frame t go on that layer's mapping; NaN where the
    point leaves the frame or has no pre-image there."""
    fr = torch.tensor(frames, dtype=torch.long)
    pos, res = _solve(model.mappings[layer], pixels, torch.full((len(pixels),), t, dtype=torch.long), fr)
    w = _weight_along(model, pos, torch.full((len(pixels),), layer, dtype=torch.long), fr)
    return torch.where(_found(pos, res, model.geom), w, torch.full_like(w, float("nan")))


@torch.no_grad()
def checked_weights(model: LayeredAtlas, pixels: torch.Tensor, t: int, weights: torch.Tensor, nearby: int = NEARBY_FRAMES) -> torch.Tensor:
    """Layer weights [N, layers] of continuous pixels [N, 2] of frame t, from their fitted
    `weights` [N, layers]: a foreground weight below VISIBLE_WEIGHT is raised to its median
    (the lower middle value) along that layer's mapping in the `nearby` frames nearest t
    (NaN where the point leaves the frame there or has no pre-image), where that is larger; the
    foregrounds are then scaled to sum to at most 1 and the background takes the rest.

    The fit can mislay part of an object in a single frame (the motion bootstrap missed it
    there), painting it into the background; the frames around still show the points of
    the object's mapping on the object."""
    frames = sorted(range(model.geom.num_frames), key=lambda f: abs(f - t))[1 : 1 + nearby]
    if weights.shape[1] < 2 or not frames or not len(pixels):
        return weights
    weights = weights.clone()
    device = next(model.parameters()).device
    model.cpu()  # the solve runs on the CPU; the model goes back where it was
    try:
        for layer in range(1, weights.shape[1]):
            rows = (weights[:, layer] < VISIBLE_WEIGHT).nonzero().squeeze(1)
            if len(rows):
                median = _weight_nearby(model, pixels[rows], t, layer, frames).nanmedian(dim=1).values
                up = median > weights[rows, layer]  # False where NaN: no nearby frame shows the point
                weights[rows[up], layer] = median[up]
    finally:
        model.to(device)
    fg = weights[:, 1:] / weights[:, 1:].sum(1, keepdim=True).clamp_min(1.0)
    return torch.cat([1.0 - fg.sum(1, keepdim=True), fg], dim=1)


@torch.no_grad()
def track_points(model: LayeredAtlas, queries: np.ndarray, layer: str | None = None,
                 flow: FlowField | None = None) -> Tracks:
    """Tracks of `queries` [N, 3] (x, y, t) through every frame; the fit's `flow` checks
    which layer each query moves with; see the module docstring."""
    g = model.geom
    q = np.asarray(queries, np.float64).reshape(-1, 3)
    if not len(q):
        raise AtlasInputError("no points to track")
    frames_q = q[:, 2]
    if (frames_q != np.round(frames_q)).any() or frames_q.min() < 0 or frames_q.max() >= g.num_frames:
        bad = q[(frames_q != np.round(frames_q)) | (frames_q < 0) | (frames_q >= g.num_frames)][0]
        raise AtlasInputError(f"query frame {bad[2]:g} is not a frame of this bundle (0..{g.num_frames - 1})")
    outside = ~((q[:, 0] >= 0) & (q[:, 0] <= g.width) & (q[:, 1] >= 0) & (q[:, 1] <= g.height))  # NaN too
    if outside.any():
        x, y = q[outside][0, :2]
        raise AtlasInputError(f"point ({x:g}, {y:g}) lies outside the {g.width}x{g.height} frame")
    if layer is not None and layer not in model.layer_names:
        raise AtlasInputError(f"no layer {layer!r} in this bundle; layers: {', '.join(model.layer_names)}")
    model = model.cpu().eval()
    n, T = len(q), g.num_frames
    qp = torch.from_numpy(q[:, :2]).float()
    qt = torch.from_numpy(q[:, 2]).long()
    weights_q = model.layer_weights(model.alpha(qp - 0.5, qt))
    if layer is None:
        for t in qt.unique().tolist():
            rows = (qt == t).nonzero().squeeze(1)
            weights_q[rows] = checked_weights(model, qp[rows], t, weights_q[rows])
    chosen = torch.full((n,), model.layer_names.index(layer)) if layer else weights_q.argmax(dim=1)
    if layer is None and flow is not None and len(model.mappings) > 1 and T > 1:
        solved = [_solve(m, qp, qt, torch.arange(T)) for m in model.mappings]
        tracks = torch.stack([p for p, _ in solved])  # [layers, n, T, 2]
        residuals = torch.stack([r for _, r in solved])  # [layers, n, T]
        each = torch.arange(n)
        weight = _weight_along(model, tracks[chosen, each], chosen)
        carried, reached = carried_by_flow(flow, q, FLOW_CHECK_FRAMES)
        in_view = reached & (weight >= VISIBLE_WEIGHT).numpy()
        compared = np.where(in_view.any(axis=1, keepdims=True), in_view, reached)
        switched_to = torch.from_numpy(_switched_by_flow(chosen.numpy(), tracks.numpy(), carried, compared, g.scale))
        moved = switched_to != chosen  # only these need their weights along the new layer's track
        chosen = switched_to
        positions, residual = tracks[chosen, each], residuals[chosen, each]
        if moved.any():
            weight[moved] = _weight_along(model, positions[moved], chosen[moved])
    else:
        positions = torch.zeros(n, T, 2)
        residual = torch.full((n, T), float("inf"))
        for li in chosen.unique().tolist():
            rows = (chosen == li).nonzero().squeeze(1)
            positions[rows], residual[rows] = _solve(model.mappings[li], qp[rows], qt[rows], torch.arange(T))
        weight = _weight_along(model, positions, chosen)
    visible = _found(positions, residual, g) & (weight >= VISIBLE_WEIGHT)
    confidence = torch.where(torch.isfinite(residual), weight * torch.exp(-residual), torch.zeros_like(weight))
    positions[torch.arange(n), qt] = qp  # the query itself, exactly
    return Tracks(q.astype(np.float32), [model.layer_names[i] for i in chosen.tolist()], positions.numpy(), visible.numpy(),
                  confidence.clamp(0, 1).numpy().astype(np.float32))
