"""Registration that holds: long-range correspondences, conditioned global motion, and the
checks that say when a layer's mapping is degenerate or drifts."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from atlas.diagnose import ADVICE, DRIFT_PX, MIN_FRAME_PAIRS, _drift_warning, drift_by_frame, held_run, layer_health
from atlas.initialise import CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO, Chain, adjust, robust_chain, well_conditioned
from atlas.longrange import groups, long_range_pairs, strides
from atlas.model import FrameGeometry
from atlas.preprocess import Preprocessed, preprocess


@pytest.fixture(scope="module")
def pre_long(clip):
    return preprocess(clip.frames, flow="dis", long_range_stride=4, long_range_samples=512)


def test_long_range_pairs_match_the_true_motion(pre_long, clip):
    pairs = pre_long.pairs.numpy()
    assert strides(clip.frames.shape[0], 4) == [1, 2, 4]
    by = groups(pairs)
    assert {k for _, k in by} == {1, 2, 4} and all(len(rows) <= 512 for rows in by.values())
    t, t2 = pairs[:, 0].astype(int), pairs[:, 3].astype(int)
    xy, xy2 = pairs[:, 1:3], pairs[:, 4:6]
    # background pixels (off the sprite at both ends) move against the camera
    c, r = clip.sprite_centre, clip.sprite_radius
    bg = (((xy + 0.5 - c[t]) ** 2).sum(1) > (r + 2) ** 2) & (((xy2 + 0.5 - c[t2]) ** 2).sum(1) > (r + 2) ** 2)
    true = xy + (clip.camera[t] - clip.camera[t2])
    err = np.linalg.norm(xy2 - true, axis=1)
    for k in (2, 4):
        sel = bg & (t2 - t == k)
        assert sel.sum() > 100 and np.median(err[sel]) < 0.3, (k, np.median(err[sel]))


def test_long_range_pairs_need_a_kept_chain_of_shorter_matches(clip):
    """A stride-k match is kept only where both stride-k/2 matches it was started from were:
    where the consecutive flow is unreliable in the middle frame, frames 0 and 2 still match
    directly (the same static texture, forward-backward consistent), but no pair starts there."""
    frames = np.repeat(clip.frames.numpy()[:1], 3, axis=0)  # a still camera: every frame the same
    T, H, W = frames.shape[:3]
    fwd = np.zeros((T - 1, H, W, 2), np.float32)
    valid = np.ones((T - 1, H, W), bool)
    valid[1, 20:40, 30:60] = False  # frame 1 -> 2 unreliable here
    pairs = long_range_pairs(frames, fwd, fwd, valid, 2, 10**6)
    two = pairs[pairs[:, 3] - pairs[:, 0] == 2]
    x, y = two[:, 1], two[:, 2]
    in_hole = (x >= 30) & (x < 60) & (y >= 20) & (y < 40)
    assert len(two) > 0.8 * (H * W - 20 * 30) and not in_hole.any()
    assert np.abs(two[:, 4:6] - two[:, 1:3]).max() < 0.5  # and the kept ones are right


def test_a_plate_above_the_matching_size_is_matched_smaller_and_scaled_back(clip, monkeypatch):
    """Strides above 1 of a large plate are matched at longrange.ANALYSIS_SIDE: the matches
    still follow the true motion, in the plate's own pixels, starting on whole pixels."""
    from atlas import longrange

    frames = clip.frames.numpy()
    H, W = frames.shape[1:3]
    monkeypatch.setattr(longrange, "ANALYSIS_SIDE", max(W, H) // 2)
    pre = preprocess(clip.frames, flow="dis")
    pairs = long_range_pairs(frames, pre.flow_fwd.float().numpy(), pre.flow_bwd.float().numpy(), pre.valid_fwd.numpy(), 4, 512)
    t, t2 = pairs[:, 0].astype(int), pairs[:, 3].astype(int)
    xy, xy2 = pairs[:, 1:3], pairs[:, 4:6]
    assert np.array_equal(xy, np.round(xy)) and xy[:, 0].max() >= W - 4 and xy[:, 1].max() >= H - 4 and xy.min() >= 0
    c, r = clip.sprite_centre, clip.sprite_radius
    bg = (((xy + 0.5 - c[t]) ** 2).sum(1) > (r + 3) ** 2) & (((xy2 + 0.5 - c[t2]) ** 2).sum(1) > (r + 3) ** 2)
    err = np.linalg.norm(xy2 - (xy + clip.camera[t] - clip.camera[t2]), axis=1)
    for k in (2, 4):
        sel = bg & (t2 - t == k)
        assert sel.sum() > 100 and np.median(err[sel]) < 0.6, (k, np.median(err[sel]))


def test_chain_follows_the_camera(pre_long, clip):
    g = FrameGeometry(*clip.frames.shape[:3])
    chain = robust_chain(pre_long, g, "homography", "outside")
    assert chain.model == "homography" and chain.break_frame is None
    p = np.array([[10.0, 12.0], [60.0, 40.0], [33.0, 20.0]])
    q = (p + 0.5 - [g.width / 2, g.height / 2]) / g.scale
    for t in range(1, g.num_frames):
        ph = np.c_[q, np.ones(3)] @ chain.transforms[t].T
        mapped = ph[:, :2] / ph[:, 2:] * g.scale + [g.width / 2, g.height / 2] - 0.5
        assert np.abs(mapped - (p + clip.camera[t] - clip.camera[0])).max() < 1.5, t


def test_conditioning_rejects_folds_blow_ups_and_strong_perspective():
    g = FrameGeometry(10, 60, 80)
    ok = lambda m: well_conditioned(np.asarray(m, float), g, CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO)
    assert ok(np.eye(3)) and ok(np.diag([2.0, 2.0, 1.0])) and ok([[1, 0.2, 0.1], [-0.1, 1, 0], [0, 0, 1]])
    assert ok(np.diag([7.0, 7.0, 1.0])) and not ok(np.diag([9.0, 9.0, 1.0]))  # 81x the frame's area
    assert not ok(np.diag([1.0, -1.0, 1.0]) @ [[1, 3, 0], [0, 1, 0], [0, 0, 1]])  # sheared flat
    assert not ok([[1, 0, 0], [0, 1, 0], [2.5, 0, 1]])  # the far edge runs off towards the horizon
    assert not ok([[1, 0, 0], [0, 1, 0], [0, 0, 0]]) and not ok(np.full((3, 3), np.nan))


def _flow_of(motion: np.ndarray, g: FrameGeometry) -> torch.Tensor:
    """The flow [H, W, 2] of a frame-to-frame motion of normalised coordinates."""
    ys, xs = np.mgrid[0 : g.height, 0 : g.width].astype(np.float64)
    centre = np.array([g.width / 2, g.height / 2])
    q = (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5 - centre) / g.scale
    ph = np.c_[q, np.ones(len(q))] @ motion.T
    moved = ph[:, :2] / ph[:, 2:] * g.scale + centre - 0.5
    return torch.from_numpy((moved - np.stack([xs, ys], -1).reshape(-1, 2)).reshape(g.height, g.width, 2)).float()


TURN = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.12, 0.0, 1.0]])  # a camera turning a little every frame


def _turning(T: int) -> tuple[Preprocessed, FrameGeometry]:
    g = FrameGeometry(T, 60, 80)
    flow = _flow_of(TURN, g).expand(T - 1, -1, -1, -1).contiguous()
    valid = torch.ones(T - 1, 60, 80, dtype=torch.bool)
    return Preprocessed(flow, -flow, valid, valid, torch.zeros(T, 60, 80), "dis", "motion"), g


def test_a_chain_that_degenerates_falls_back_and_names_the_frame():
    """A camera turning through the whole shot: each link is a fine homography, but chained
    its perspective runs off towards the horizon, in the plane of any frame."""
    T = 40
    pre, g = _turning(T)
    chain = robust_chain(pre, g, "homography", "all")
    assert chain.broken_model == "homography" and chain.model in ("affine", "similarity", "translation")
    assert 1 < chain.break_frame < T
    assert all(well_conditioned(h, g, CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO) for h in chain.transforms)


def test_a_chain_that_breaks_in_frame_0s_plane_holds_in_the_middle_frames():
    """The same camera over a shot whose turn from frame 0 is too far for one plane but
    half of it (from the middle) is not: the homography chain holds, referred to a middle
    frame, and is the true motion (from frame 0 it breaks at frame 11)."""
    T = 20
    pre, g = _turning(T)
    chain = robust_chain(pre, g, "homography", "all")
    assert chain.model == "homography" and chain.break_frame is None and T // 4 < chain.ref < 3 * T // 4
    for t, h in enumerate(chain.transforms):  # frame t -> frame ref: the turn applied ref - t times
        true = np.linalg.matrix_power(TURN, chain.ref) @ np.linalg.matrix_power(np.linalg.inv(TURN), t)
        assert np.allclose(h, true / true[2, 2], atol=2e-3), t
        assert well_conditioned(h, g, CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO)


def test_a_few_links_with_spurious_perspective_are_simplified_and_the_chain_holds():
    """A panning camera whose flow gives every third pair a spurious perspective (each
    passing the link checks): chained as measured, no frame's plane holds the shot; with
    those outlier links given an affine motion, the homography chain holds and keeps the
    true pan on the other links."""
    from atlas.initialise import _chain, steadiest_reference

    T = 30
    g = FrameGeometry(T, 60, 80)
    pan = np.array([[1.0, 0.0, 0.02], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    spurious = np.array([[1.0, 0.0, 0.02], [0.0, 1.0, 0.0], [0.0, 0.37, 1.0]])
    bad = set(range(2, T - 1, 3))
    true = {t: spurious if t in bad else pan for t in range(T - 1)}
    assert steadiest_reference(_chain(true, T), g) is None
    flow = torch.stack([_flow_of(true[t], g) for t in range(T - 1)])
    valid = torch.ones(T - 1, 60, 80, dtype=torch.bool)
    chain = robust_chain(Preprocessed(flow, -flow, valid, valid, torch.zeros(T, 60, 80), "dis", "motion"), g, "homography", "all")
    assert chain.model == "homography" and chain.break_frame is None
    assert all(well_conditioned(h, g, CHAIN_AREA, CHAIN_ANGLE_DEG, CHAIN_W_RATIO) for h in chain.transforms)
    for t in set(range(T - 1)) - bad:
        link = np.linalg.inv(chain.transforms[t + 1]) @ chain.transforms[t]
        assert np.allclose(link / link[2, 2], pan, atol=2e-3), t


def _frame_filling_object(motion: np.ndarray, T: int) -> tuple[Preprocessed, FrameGeometry]:
    """An 80x60 shot of T frames that a given foreground mask covers whole, moving by
    `motion` every frame."""
    g = FrameGeometry(T, 60, 80)
    flow = _flow_of(motion, g).expand(T - 1, -1, -1, -1).contiguous()
    valid = torch.ones(T - 1, 60, 80, dtype=torch.bool)
    return Preprocessed(flow, -flow, valid, valid, torch.ones(T, 60, 80), "dis", "given"), g


def test_an_object_coming_closer_keeps_its_motion_and_its_atlas_holds_the_closest_view():
    """An object that grows 5.4x on screen over the shot (1.06x a frame): the similarity
    chain holds (it used to be judged degenerate and fall back to translation), and the
    layer's canonical plane is at the density of the last, closest frame, not frame 0's."""
    from atlas.initialise import initial_layout

    T = 30
    pre, g = _frame_filling_object(np.diag([1.06, 1.06, 1.0]), T)
    chain = robust_chain(pre, g, "similarity", "inside")
    assert chain.model == "similarity" and chain.break_frame is None
    transforms, lo, hi, chains = initial_layout(pre, g, 1)
    corners = np.array([[0.0, 0.0], [79.0, 0.0], [79.0, 59.0], [0.0, 59.0]])
    width = lambda m: np.ptp(_moved(m, corners, g)[:, 0]) / 79.0  # the frame's width in the canonical plane, in frame widths
    fg = transforms[1].double().numpy()
    assert abs(width(fg[-1]) - 1.0) < 0.02 and abs(width(fg[0]) - 1.06 ** (T - 1)) < 0.1
    extent = (hi[1] - lo[1]) * g.scale / torch.tensor([80.0, 60.0])  # the foreground atlas, in frames at the closest view
    assert (extent >= 1.06 ** (T - 1)).all(), extent


def test_an_object_turning_away_keeps_its_foreshortening_in_the_global_motion():
    """An object turning about its vertical axis narrows on screen (0.97x a frame in x, a
    little shear, none in y): the foreground's chain takes that affine motion link by
    link, which no similarity can (it would leave the narrowing to the residual)."""
    from atlas.initialise import initial_layout

    T = 16
    turn = np.array([[0.97, 0.02, 0.004], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    pre, g = _frame_filling_object(turn, T)
    transforms, _, _, chains = initial_layout(pre, g, 1)
    assert chains[1].model == "affine" and chains[1].break_frame is None
    fg = transforms[1].double().numpy()
    for t in range(T - 1):
        link = np.linalg.inv(fg[t + 1]) @ fg[t]
        assert np.allclose(link / link[2, 2], turn, atol=2e-3), t


def _object_in_a_still_mask(w: int, h: int) -> tuple[Preprocessed, FrameGeometry]:
    """A still camera; the motion mask is a fixed 50x40 rectangle, still but for an object
    (w x h) that crosses it 3 px a frame to the right (as a mask with smoke or the ground
    between an object's parts sweeps in); flow and correspondences are exact."""
    T, g = 9, FrameGeometry(9, 60, 80)
    flow = torch.zeros(T - 1, 60, 80, 2)
    for t in range(T - 1):
        flow[t, 10 : 10 + h, 15 + 3 * t : 15 + 3 * t + w, 0] = 3.0
    masks = torch.zeros(T, 60, 80)
    masks[:, 10:50, 15:65] = 1.0
    valid = torch.ones(T - 1, 60, 80, dtype=torch.bool)
    ys, xs = (c.ravel() + 0.5 for c in np.mgrid[10:50:2, 15:65:2])
    rows = []  # correspondences 1, 2 and 4 frames apart, for the joint refinement
    for t in range(T):
        for k in (1, 2, 4):
            if t + k < T:
                on = (xs >= 15 + 3 * t) & (xs < 15 + 3 * t + w) & (ys < 10 + h)
                rows.append(np.stack([np.full_like(xs, t), xs, ys, np.full_like(xs, t + k), xs + 3.0 * k * on, ys], 1))
    pairs = torch.from_numpy(np.concatenate(rows)).float()
    return Preprocessed(flow, -flow, valid, valid, masks, "dis", "motion", pairs), g


@pytest.mark.parametrize("w, h, moved_px", [(24, 30, 3.0), (8, 8, 0.0)])
def test_a_foreground_moves_as_what_the_camera_does_not_explain_in_its_mask(w, h, moved_px):
    """The object fills 36% of the motion bootstrap's mask: its layer's initial motion is the
    object's, not the still majority's (RANSAC over the whole mask fits those; a mask the
    user gave is the object, whole). A 3% object is only a part moving on a still one: the
    layer keeps the mask's (the camera's) motion."""
    from atlas.initialise import initial_layout

    pre, g = _object_in_a_still_mask(w, h)
    fg = initial_layout(pre, g, 1)[0][1].double().numpy()
    centre = np.array([[25.0, 20.0]])  # on the object in every frame
    for t in range(g.num_frames - 1):
        link = np.linalg.inv(fg[t + 1]) @ fg[t]
        assert np.allclose(_moved(link, centre + [3.0 * t, 0.0], g), centre + [3.0 * t + moved_px, 0.0], atol=0.05), (t, link)
    if moved_px:  # RANSAC over the whole mask does not follow the object; a given mask is taken whole
        whole = robust_chain(pre, g, "affine", "inside").transforms
        given = initial_layout(dataclasses.replace(pre, mask_source="user"), g, 1)[0][1].double().numpy()
        for fg in (whole, given):
            moved = [_moved(np.linalg.inv(fg[t + 1]) @ fg[t], centre + [3.0 * t, 0.0], g)[0, 0] - 25.0 - 3.0 * t for t in range(g.num_frames - 1)]
            assert max(abs(m - moved_px) for m in moved) > 1.0, moved


def _moved(m: np.ndarray, p: np.ndarray, g: FrameGeometry) -> np.ndarray:
    """Pixels p [N, 2] moved by a transform of normalised coordinates."""
    centre = np.array([g.width / 2, g.height / 2])
    ph = np.c_[(p + 0.5 - centre) / g.scale, np.ones(len(p))] @ m.T
    return ph[:, :2] / ph[:, 2:] * g.scale + centre - 0.5


def test_joint_refinement_removes_the_drift_a_chain_adds_up():
    """Every consecutive link is off by a small zoom, so the chain drifts by ~10 px over
    the shot; correspondences up to 8 frames apart (a fifth of them on another motion)
    pull every frame back onto the true camera path."""
    T, rng = 24, np.random.default_rng(0)
    g = FrameGeometry(T, 60, 80)
    truth = [np.eye(3)]
    for t in range(1, T):  # frame t -> frame 0's plane: a pan with a little rotation
        a = 0.004 * t
        truth.append(np.array([[np.cos(a), -np.sin(a), 0.01 * t], [np.sin(a), np.cos(a), 0.004 * t], [0, 0, 1.0]]))
    truth = np.stack(truth)
    bias = np.diag([1.01, 1.01, 1.0])
    chain = np.stack([truth[t] @ np.linalg.matrix_power(bias, t) for t in range(T)])
    rows = []
    for t in range(T):
        for k in (1, 2, 4, 8):
            if t + k < T:
                p = rng.uniform([0, 0], [g.width - 1, g.height - 1], (200, 2))
                q = _moved(np.linalg.inv(truth[t + k]) @ truth[t], p, g) + rng.normal(0, 0.2, (200, 2))
                q[:40] = p[:40] + rng.uniform(-6, 6, 2)  # another object's motion
                rows.append(np.c_[np.full(200, t), p, np.full(200, t + k), q])
    pairs = np.concatenate(rows).astype(np.float32)
    err = lambda ms: max(np.abs(_moved(m, np.array([[5.0, 5.0], [70.0, 50.0]]), g) - _moved(h, np.array([[5.0, 5.0], [70.0, 50.0]]), g)).max()
                         for m, h in zip(ms, truth))
    before = Chain(chain, "similarity")
    after = adjust(before, pairs, np.zeros((T, 60, 80), np.uint8), g, "all")
    assert err(before.transforms) > 8.0
    assert err(after.transforms) < 0.5, err(after.transforms)
    assert after.model == "similarity" and np.allclose(after.transforms[0], np.eye(3))
    # consecutive pairs only: nothing to learn from beyond the chain
    only_next = pairs[pairs[:, 3] - pairs[:, 0] == 1]
    assert adjust(before, only_next, np.zeros((T, 60, 80), np.uint8), g, "all") is before


def test_health_flags_a_degenerate_and_a_drifting_layer(fitted):
    model = copy.deepcopy(fitted.model)
    chains = [Chain(m.transforms.detach().numpy(), "homography") for m in model.mappings]
    pre = fitted.cache
    health, warns = layer_health(model, pre, chains, fitted.textures, 30.0)
    assert not any(h["degenerate"] for h in health.values()) and not warns, warns
    with torch.no_grad():
        model.mappings[0].transforms[5] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [4.0, 0, 1.0]])
    # correspondences that disagree by 10 px: the background drifts
    W, H = fitted.size
    rng = np.random.default_rng(0)
    xy = rng.uniform([5, 5], [W - 25, H - 5], (500, 2))
    bad = np.c_[np.zeros(500), xy, np.full(500, 3), xy + [10.0, 0.0]]
    drifting = copy.copy(pre)
    drifting.pairs = torch.from_numpy(bad).float()
    health, warns = layer_health(model, drifting, chains, fitted.textures, 18.0)
    assert health["background"]["degenerate"] and health["background"]["degenerate_frame"] == 5
    assert any("background: the mapping is degenerate from frame 5" in w for w in warns), warns
    assert any("reconstruction is poor" in w for w in warns)
    model = copy.deepcopy(fitted.model)
    health, warns = layer_health(model, drifting, chains, fitted.textures, 30.0)
    assert health["background"]["long_range_px_mean"] > DRIFT_PX
    assert any("background: the mapping drifts" in w for w in warns), warns


def test_a_drifting_layers_warning_says_where_it_drifts_and_where_it_holds(fitted, clip):
    """True background correspondences in frames 0-3, ones 10 px off in frames 4-7: the
    warning puts the drift in the later frames and offers the earlier ones as a --frames
    range, in the source's frame numbers (the fit began at source frame 10)."""
    W, H = fitted.size
    rng = np.random.default_rng(0)
    rows = []
    for t, off in ((0, 0.0), (1, 0.0), (4, 10.0), (5, 10.0)):
        xy = rng.uniform([5, 5], [W - 5, H - 5], (300, 2))
        rows.append(np.c_[np.full(300, t), xy, np.full(300, t + 2), xy + clip.camera[t] - clip.camera[t + 2] + [off, 0.0]])
    pre = copy.copy(fitted.cache)
    pre.pairs = torch.from_numpy(np.concatenate(rows)).float()
    chains = [Chain(m.transforms.detach().numpy(), "homography") for m in fitted.model.mappings]
    health, warns = layer_health(fitted.model, pre, chains, fitted.textures, 30.0, first_frame=10)
    per_frame = health["background"]["long_range_px_per_frame"]
    assert len(per_frame) == 8 and max(per_frame[:4]) < 1.0 and min(per_frame[4:]) > 8.0, per_frame
    line = next(w for w in warns if "background: the mapping drifts" in w)
    assert "in frames 14-17" in line and "--frames 10:14" in line, line
    # unmeasured frames do not break a run, a run needs two measured ones
    assert held_run(np.array([1.0, np.nan, 1.0, 5.0, 1.0, 1.0, 1.0, np.nan]), DRIFT_PX) == (4, 8)
    assert held_run(np.array([5.0, 1.0, 5.0, np.nan, 1.0, 1.0]), DRIFT_PX) == (3, 6)
    assert held_run(np.array([5.0, 1.0, 5.0]), DRIFT_PX) is None
    # nor is a run too short to fit: the warning then offers no range (2 of 20 frames, under MIN_HELD_FRAMES)
    assert held_run(np.array([1.0, 1.0, 5.0, 1.0, 1.0, 1.0]), DRIFT_PX, min_frames=4) is None
    short = _drift_warning("foreground", 3.0, np.r_[1.0, 1.0, np.full(18, 5.0)], 0, ADVICE)
    assert "in frames 2-19" in short and "holds" not in short and short.endswith(ADVICE), short


def test_a_frame_with_a_handful_of_matches_is_not_named_the_worst():
    """Frames 8 and 9 share 5 correspondences, all 200 px off (too few to judge a frame by:
    one wrong match would name it); frames 0-7 have hundreds, 5 px off: frames 8 and 9 are
    unmeasured and the worst frame named is a well-matched one."""
    rows = [np.c_[np.full((300, 1), t), np.full((300, 1), t + 2)] for t in range(6)]
    err = [np.full(300, 5.0) for _ in range(6)]
    assert MIN_FRAME_PAIRS > 5
    rows.append(np.c_[np.full((5, 1), 8), np.full((5, 1), 9)])
    err.append(np.full(5, 200.0))
    per_frame = drift_by_frame(np.concatenate(err), np.concatenate(rows), 10)
    assert np.isnan(per_frame[8:]).all() and np.allclose(per_frame[:8], 5.0), per_frame
    line = _drift_warning("foreground", 6.0, per_frame, 0, ADVICE)
    assert "in frames 0-7, up to 5.0 px at frame" in line, line
    # no frame matched well enough to name: the warning still says the layer drifts
    thin = _drift_warning("foreground", 6.0, np.full(10, np.nan), 0, ADVICE)
    assert "the mapping drifts" in thin and "in frames" not in thin, thin


def test_a_frame_is_named_by_where_most_of_its_correspondences_land():
    """Frames 0-5 each hold 300 correspondences 0.5 px off and 90 (part of an object the fit
    left in the layer) 300 px off; in frames 6-9 most land 8 px off. Only frames 6-9 drift,
    and frame 0:6 is where the layer holds: a mean would put every frame over the limit."""
    rows, err = [], []
    for t in range(0, 6, 2):
        rows += [np.c_[np.full((300, 1), t), np.full((300, 1), t + 1)], np.c_[np.full((90, 1), t), np.full((90, 1), t + 1)]]
        err += [np.full(300, 0.5), np.full(90, 300.0)]
    rows.append(np.c_[np.full((300, 1), 6), np.full((300, 1), 8)])
    rows.append(np.c_[np.full((300, 1), 7), np.full((300, 1), 9)])
    err += [np.r_[np.full(250, 8.0), np.full(50, 0.5)], np.full(300, 8.0)]
    per_frame = drift_by_frame(np.concatenate(err), np.concatenate(rows), 10)
    assert np.allclose(per_frame[:6], 0.5) and np.allclose(per_frame[6:], 8.0), per_frame
    line = _drift_warning("background", float(np.concatenate(err).mean()), per_frame, 0, ADVICE)
    assert "in frames 6-9, up to 8.0 px" in line and "--frames 0:6" in line, line


def test_atlas_past_4096_bakes_at_source_density_and_past_the_cap_is_baked_smaller(fitted, tmp_path):
    """A panning plate's atlas may be many thousand texels wide: it bakes and exports at the
    source's density up to the texture cap; past it, it is baked smaller, with a warning."""
    from PIL import Image

    from atlas.bake import MAX_TEXELS, MAX_TEXTURE_SIDE, bake, full_texture_size, texture_size
    from propagation.export import export

    model = copy.deepcopy(fitted.model)
    bg = model.mappings[0]
    with torch.no_grad():
        bg.uv_hi[0] = bg.uv_lo[0] + 6000 / model.geom.scale  # 6,000 source pixels wide
    w, h = texture_size(model, 0)
    assert 6000 <= w <= 6001 and (w, h) == full_texture_size(model, 0)  # float32 uv range: a texel of rounding
    seen = [np.ones((h, w), bool)] + [fitted.textures[n][..., 3] > 0 for n in fitted.layer_names[1:]]
    textures = bake(model, seen)
    assert textures["background"].shape == (h, w, 4)
    wide = copy.copy(fitted)
    wide.textures = textures
    out = export(wide, tmp_path / "exp")
    with Image.open(out / "atlas" / "background.png") as im:
        assert im.size == (w, h)
    # a 4K plate panning over ten frame widths: no blow-up, but past the texture cap
    from atlas.config import load_config
    from atlas.model import LayeredAtlas

    geom = FrameGeometry(2, 2160, 3840)
    lo = torch.tensor([[-0.6, -0.4]])
    plate = LayeredAtlas(geom, load_config("fast").model, ["background"], torch.eye(3).repeat(1, 2, 1, 1), lo,
                         lo + torch.tensor([[40000.0, 3000.0]]) / geom.scale)
    cw, ch = texture_size(plate, 0)
    assert cw <= MAX_TEXTURE_SIDE and cw * ch <= MAX_TEXELS and abs(cw / ch - 40000 / 3000) < 0.05
    empty = Preprocessed(*[torch.zeros(0)] * 5, "dis", "motion")
    texture = {"background": np.broadcast_to(np.zeros(4, np.float32), (ch, cw, 4))}  # only its shape is read
    health, warns = layer_health(plate, empty, [Chain(np.eye(3)[None].repeat(2, 0), "homography")], texture, 30.0)
    assert not health["background"]["degenerate"]
    assert any("background: its atlas needs 400" in w and f"baked at {cw}x{ch}" in w for w in warns), warns
