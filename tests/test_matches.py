from __future__ import annotations

import numpy as np

from atlas.io import to_uint8
from atlas.matches import MATCH_REACH, features, matched_start, mutual_matches
from atlas.preprocess import dis_flow, grey_u8
from atlas.synthetic import make_clip, texture


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A grey frame of the synthetic clips' texture (detail at several scales, for SIFT)."""
    return grey_u8(texture(h, w, np.random.default_rng(seed), 12))


def test_mutual_matches_find_a_large_shift():
    big = _textured(200, 360)
    a, b = big[:, 60:], big[:, :300]  # b is a seen 60 px further left: content moves right by 60
    src, dst = mutual_matches(features(a, 1024), features(b, 1024))
    assert len(src) > 50
    moved = dst - src
    assert np.mean(np.linalg.norm(moved - [60.0, 0.0], axis=1) < 1.0) > 0.9


def test_features_of_a_plate_are_in_its_pixels():
    """Found on the frame shrunk to the analysis side, matches are still in the plate's pixels."""
    big = _textured(400, 720, seed=1)
    a, b = big[:, 120:], big[:, :600]
    src, dst = mutual_matches(features(a, 300), features(b, 300))
    assert len(src) > 20
    assert np.median(np.linalg.norm(dst - src - [120.0, 0.0], axis=1)) < 1.5


def test_matched_start_restarts_only_around_matches_that_found_a_lost_motion():
    a = _textured(100, 200, seed=2)
    b = np.roll(a, (5, -40), axis=(0, 1))  # every point moves by (-40, 5); the flow below says 0
    flow = np.zeros((100, 200, 2), np.float32)
    assert matched_start(flow, np.array([[20.0, 20.0]]), np.array([[20.0, 20.0]]), a, b) is None  # agrees with the flow
    assert matched_start(flow, np.array([[150.0, 50.0]]), np.array([[157.0, 41.0]]), a, b) is None  # a wrong match
    src, dst = np.array([[150.0, 50.0], [20.0, 20.0]]), np.array([[110.0, 55.0], [20.0, 20.0]])
    start = matched_start(flow, src, dst, a, b)
    assert np.allclose(start[50, 150], [-40.0, 5.0]) and np.allclose(start[50, 140], [-40.0, 5.0])
    reach = MATCH_REACH * 200
    assert np.allclose(start[50, int(150 - reach) - 2], 0.0)  # beyond the match's reach: the flow's own
    flow[40:60, 130:145] = [-40.0, 5.0]  # the flow has the motion just beside the match: nothing was lost
    assert matched_start(flow, src[:1], dst[:1], a, b) is None


def test_dis_flow_regains_an_object_lost_from_the_first_pair():
    """A sprite 40 px a frame: plain DIS gives it the background's motion in every pair, so
    the previous pair's velocity has nothing to pass on (seed 5: about 39 px off without the
    matches); SIFT matches on its texture restart the search where it went."""
    speed = np.array([-40.0, 6.0])
    clip = make_clip(num_frames=6, width=400, height=200, seed=5, camera_speed=(2.0, 0.5), sprite_speed=tuple(speed))
    frames, on = to_uint8(clip.frames.numpy()), clip.masks.numpy() > 0.5
    both = on[:-1] & on[1:]
    fwd, bwd = dis_flow(frames)
    for flows, true in ((fwd, speed), (bwd, -speed)):
        worst = max(float(np.median(np.linalg.norm(f.astype(np.float32)[m] - true, axis=-1))) for f, m in zip(flows, both))
        assert worst < 0.5, worst


def test_matches_are_skipped_without_guidance(monkeypatch):
    """`guided=False` (the benches' plain baseline) finds no features."""
    monkeypatch.setattr("atlas.preprocess.features", lambda *a: (_ for _ in ()).throw(AssertionError("features computed")))
    frames = np.stack([np.dstack([_textured(60, 80, s)] * 3) for s in range(3)])
    fwd, _ = dis_flow(frames, guided=False)
    assert fwd.shape == (2, 60, 80, 2)
