"""Point tracks through the atlas (`bundle.track`, `atlas track`) and the TAP-Vid metrics."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from atlas.cli import main
from atlas.errors import AtlasInputError
from atlas.track_metrics import chained_flow_tracks, delta_avg_difference, tapvid_metrics


def _truth(clip, points: np.ndarray):
    """Ground truth of frame-0 points of the synthetic clip: (positions [N, T, 2], on the
    sprite [N], hidden [N, T] (a background point under the sprite, or out of frame))."""
    centre, radius = clip.sprite_centre, clip.sprite_radius
    on_sprite = ((points - centre[0]) ** 2).sum(-1) < radius**2
    bg = points[:, None] - (clip.camera - clip.camera[0])[None]
    fg = points[:, None] + (centre - centre[0])[None]
    pos = np.where(on_sprite[:, None, None], fg, bg)
    h, w = clip.frames.shape[1:3]
    under = ((pos - centre[None]) ** 2).sum(-1) < radius**2
    out = (pos[..., 0] < 0) | (pos[..., 0] > w) | (pos[..., 1] < 0) | (pos[..., 1] > h)
    return pos, on_sprite, out | (under & ~on_sprite[:, None])


def test_tracks_follow_background_and_sprite(fitted, clip):
    rng = np.random.default_rng(0)
    pts = rng.uniform([4, 4], [76, 56], (300, 2))
    centre, radius = clip.sprite_centre[0], clip.sprite_radius
    d = np.sqrt(((pts - centre) ** 2).sum(-1))
    pts = pts[(d < radius - 3) | (d > radius + 3)]  # away from the silhouette, where layers blend
    truth, on_sprite, hidden = _truth(clip, pts)
    tracks = fitted.track([(x, y, 0) for x, y in pts])
    assert tracks.positions.shape == (len(pts), clip.frames.shape[0], 2)
    assert [name == "foreground" for name in tracks.layers] == list(on_sprite)
    err = np.linalg.norm(tracks.positions - truth, axis=-1)
    shown = ~hidden
    # tolerances (pixels of the 80x60 frames, 350 steps): the sprite's mapping drifts more
    for layer, (median, p90) in ((~on_sprite, (0.5, 1.5)), (on_sprite, (1.5, 3.0))):
        e = err[layer][shown[layer]]
        assert np.median(e) < median and np.quantile(e, 0.9) < p90, (np.median(e), np.quantile(e, 0.9))
    assert np.array_equal(tracks.positions[:, 0], pts.astype(np.float32))  # the query frame holds the query
    # visibility: mostly right, and a background point is hidden while the sprite covers it
    assert (tracks.visible == shown).mean() > 0.9
    covered = hidden & ~on_sprite[:, None] & (err < 50)
    assert covered.sum() > 10 and (~tracks.visible[covered]).mean() > 0.8
    assert tracks.confidence[tracks.visible].min() >= 0.3


def test_source_size_queries_are_scaled(fitted, clip):
    fitted.meta.source.source_size = [160, 120]  # as if fitted with --size from a 160x120 source
    try:
        a = fitted.track([(20.0, 20.0, 0)])
        b = fitted.track([(40.0, 40.0, 0)], source_size=True)
    finally:
        fitted.meta.source.source_size = None
    assert np.allclose(b.positions, 2 * a.positions, atol=1e-4) and np.array_equal(a.visible, b.visible)


def test_tapvid_metrics_on_a_hand_computed_case():
    # 2 tracks x 3 frames, frames 256x256 so pixels are metric pixels
    gt = np.array([[[10, 10], [10, 10], [10, 10]], [[50, 50], [50, 50], [50, 50]]], float)
    occ = np.array([[False, False, False], [True, False, True]])  # track 2 is queried on frame 1
    pred = gt.copy()
    pred[0, 1] += [3, 0]  # 3 px off: within 4, 8, 16
    pred[0, 2] += [0, 20]  # 20 px off: within none
    pred_occ = np.array([[False, False, False], [False, False, False]])  # track 2, frame 2: visible, but hidden in truth
    m = tapvid_metrics(gt, occ, pred, pred_occ, (256, 256))
    # evaluated (after each query frame): track 1 frames 1 and 2 (visible); track 2 frame 2 (hidden)
    # delta per threshold 1, 2, 4, 8, 16 of the 2 visible points: 0, 0, 1/2, 1/2, 1/2 -> 30
    assert m["delta_avg"] == pytest.approx(30.0)
    # Jaccard: true positives 0, 0, 1, 1, 1; false positives (predicted visible but hidden, or
    # too far) 3, 3, 2, 2, 2; TP / (2 + FP): 0, 0, 1/4, 1/4, 1/4 -> 15
    assert m["aj"] == pytest.approx(15.0)
    assert m["oa"] == pytest.approx(100 * 2 / 3)  # track 2's frame 2 is called visible
    # coordinates are scaled to 256x256: the same case on 512x128 frames, x doubled and y halved
    m2 = tapvid_metrics(gt * [2, 0.5], occ, pred * [2, 0.5], pred_occ, (512, 128))
    assert m2 == pytest.approx(m)


def test_delta_avg_difference_and_its_interval_over_tracks():
    rng = np.random.default_rng(0)
    gt = rng.uniform(20, 230, (40, 8, 2))
    occ = np.zeros((40, 8), bool)
    near = gt + 0.5  # within every threshold
    assert delta_avg_difference(gt, occ, near, near, (256, 256), draws=200) == (0.0, 0.0, 0.0)
    one_lost = near.copy()
    one_lost[0, 1:] += 100.0  # one track of 40 lost: a gap of 2.5 points that a draw without it does not see
    diff, lo, hi = delta_avg_difference(gt, occ, one_lost, near, (256, 256), draws=200)
    assert diff == pytest.approx(-100.0 / 40) and lo < diff and hi == 0.0
    all_off = gt + 3.0  # every track 4.2 px off: within 8 and 16 only, a gap every draw sees alike
    diff, lo, hi = delta_avg_difference(gt, occ, near, all_off, (256, 256), draws=200)
    assert diff == pytest.approx(60.0) and lo == pytest.approx(60.0) and hi == pytest.approx(60.0)


def test_chained_flow_baseline_integrates_the_flow():
    flow = np.zeros((3, 20, 30, 2), np.float32)
    flow[..., 0] = 1.5  # everything moves 1.5 px right per frame
    flow[1, ..., 1] = -2.0
    pos = chained_flow_tracks(flow, np.array([[5.0, 10.0, 0.0], [8.0, 8.0, 2.0]]))
    assert np.allclose(pos[0], [[5, 10], [6.5, 10], [8, 8], [9.5, 8]])
    assert np.allclose(pos[1], [[8, 8], [8, 8], [8, 8], [9.5, 8]])


def _read_nuke_tracks(text: str) -> list[dict[str, dict[int, float]]]:
    """track_x / track_y keys of each track of a Tracker4 node, parsed back."""
    def curve(body: str) -> dict[int, float]:
        keys, frame = {}, None
        for tok in body.split():
            if tok.startswith("x"):
                frame = int(tok[1:])
            elif tok != "K":
                keys[frame] = float(tok)
                frame += 1
        return keys

    out = []
    for row in re.findall(r'^ \{ \{curve K x\d+ 1\} "track \d+" (.*)$', text, flags=re.M):
        curves = re.findall(r"\{curve ([^}]*)\}", row)
        out.append({"x": curve(curves[0]), "y": curve(curves[1])})
    return out


@pytest.fixture()
def bundle_path(fitted):
    return str(fitted.path)


def test_cli_track_writes_csv_json_and_nuke(fitted, bundle_path, tmp_path):
    args = ["track", bundle_path, "--point", "20,30", "--point", "60.5,15.25@3", "--quiet"]
    for ext in ("csv", "json", "nk"):
        assert main([*args, "-o", str(tmp_path / f"t.{ext}")]) == 0
    ref = fitted.track([(20, 30, 0), (60.5, 15.25, 3)])
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 2 * fitted.num_frames and set(rows[0]) == {"track", "frame", "x", "y", "visible", "confidence"}
    r = rows[fitted.num_frames + 5]
    assert (int(r["track"]), int(r["frame"])) == (1, 5)
    assert float(r["x"]) == pytest.approx(ref.positions[1, 5, 0], abs=1e-3) and int(r["visible"]) == ref.visible[1, 5]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["size"] == list(fitted.size) and data["tracks"][1]["query"] == [60.5, 15.25, 3.0]
    assert data["tracks"][0]["y"] == pytest.approx(ref.positions[0, :, 1], abs=1e-3)
    nuke = _read_nuke_tracks((tmp_path / "t.nk").read_text())
    assert len(nuke) == 2 and "Tracker4 {" in (tmp_path / "t.nk").read_text()
    h = fitted.size[1]
    for i in range(2):
        frames = [t for t in range(fitted.num_frames) if ref.visible[i, t]]
        assert sorted(nuke[i]["x"]) == [t + 1 for t in frames]  # keyed where visible, Nuke frames from 1
        for t in frames:
            assert nuke[i]["x"][t + 1] == pytest.approx(ref.positions[i, t, 0], abs=1e-3)
            assert nuke[i]["y"][t + 1] == pytest.approx(h - ref.positions[i, t, 1], abs=1e-3)  # bottom-left origin


def test_cli_track_grid_and_points_file(fitted, bundle_path, tmp_path):
    pts = tmp_path / "pts.csv"
    pts.write_text("x,y,t\n10,10,0\n30.5,40,2\n")
    assert main(["track", bundle_path, "--points", str(pts), "-o", str(tmp_path / "a.json"), "--quiet"]) == 0
    assert [t["query"] for t in json.loads((tmp_path / "a.json").read_text())["tracks"]] == [[10, 10, 0], [30.5, 40, 2]]
    assert main(["track", bundle_path, "--grid", "4x3@1", "-o", str(tmp_path / "g.json"), "--quiet"]) == 0
    queries = [t["query"] for t in json.loads((tmp_path / "g.json").read_text())["tracks"]]
    assert len(queries) == 12 and queries[0] == [10.0, 10.0, 1.0] and queries[-1] == [70.0, 50.0, 1.0]


@pytest.mark.parametrize("extra,match", [
    (["--point", "500,10"], "outside"),
    (["--point", "10,10@99"], "not a frame"),
    (["--point", "ten,10"], "--point expects"),
    (["--grid", "0x3"], "--grid expects"),
    (["--point", "10,10", "--layer", "sky"], "no layer 'sky'"),
    (["--point", "10,10", "--grid", "2x2"], "one way"),
    ([], "one way"),
])
def test_cli_track_bad_input(bundle_path, tmp_path, capsys, extra, match):
    out = tmp_path / "t.csv"
    assert main(["track", bundle_path, "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_cli_track_bad_points_file_and_extension(bundle_path, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n3,four\n")
    nan = tmp_path / "nan.csv"
    nan.write_text("x,y,t\n1,2,0\nnan,3,0\n")
    for argv, match in ((["--points", str(bad)], "row 3"), (["--points", str(nan)], "row 3"),
                        (["--point", "1,1", "-o", str(tmp_path / "t.txt")], ".csv, .json, .nk")):
        out = ["-o", str(tmp_path / "t.csv")] if "-o" not in argv else []
        assert main(["track", bundle_path, *argv, *out]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err


def test_a_nan_query_is_outside_the_frame(fitted):
    with pytest.raises(AtlasInputError, match="outside"):
        fitted.track(np.array([[5.0, 5.0, 0.0], [float("nan"), 3.0, 1.0]]))


def test_carried_by_flow_steps_each_way_and_stops_at_the_border_and_unreliable_flow():
    from atlas.track import FlowField, carried_by_flow

    fwd = np.zeros((7, 10, 20, 2), np.float16)
    fwd[..., 0] = 1.5  # everything moves 1.5 px right per frame
    valid = np.ones((7, 10, 20), bool)
    flow = FlowField(fwd, -fwd, valid, valid.copy())
    pos, reached = carried_by_flow(flow, np.array([[5.0, 5.0, 3], [17.5, 5.0, 3]]), frames=2)
    assert reached[0].tolist() == [False, True, True, False, True, True, False, False]
    assert np.allclose(pos[0, [1, 2, 4, 5], 0], [2.0, 3.5, 6.5, 8.0]) and np.allclose(pos[0, reached[0], 1], 5.0)
    # the second point leaves the 20-px frame after one step forward (19.0, then 20.5)
    assert reached[1].tolist() == [False, True, True, False, True, False, False, False]
    # forward flow not consistent where the first point stands in frame 4: carried no further forward
    flow.valid_fwd[4, 5, 6] = False
    _, reached = carried_by_flow(flow, np.array([[5.0, 5.0, 3]]), frames=2)
    assert reached[0].tolist() == [False, True, True, False, True, False, False, False]


def _mislay_sprite(model, monkeypatch, last_frame: int) -> None:
    """As if the motion bootstrap had missed the sprite in frames 0..last_frame: opacity 0 there."""
    alpha = model.alpha
    monkeypatch.setattr(model, "alpha", lambda xy, t: torch.where((t <= last_frame)[:, None], torch.zeros(()), alpha(xy, t)))


def _sprite_queries(clip):
    rng = np.random.default_rng(1)
    pts = rng.uniform([4, 4], [76, 56], (300, 2))
    d = np.sqrt(((pts - clip.sprite_centre[0]) ** 2).sum(-1))
    pts = pts[(d < clip.sprite_radius - 3) | (d > clip.sprite_radius + 3)]
    truth, on_sprite, hidden = _truth(clip, pts)
    assert on_sprite.sum() > 10
    return np.concatenate([pts, np.zeros((len(pts), 1))], 1), truth, on_sprite, hidden


def test_a_point_the_opacity_missed_in_its_frame_alone_follows_the_object(fitted, clip, monkeypatch):
    """Sprite painted into the background in the query's frame only: the frames next to it
    show the sprite, so the weights alone (no flow) put the queries on the foreground."""
    from atlas.track import track_points

    _mislay_sprite(fitted.model, monkeypatch, last_frame=0)
    queries, _, on_sprite, _ = _sprite_queries(clip)
    tracks = track_points(fitted.model, queries)
    assert [name == "foreground" for name in tracks.layers] == list(on_sprite)


def test_a_point_the_opacity_missed_follows_the_layer_it_moves_with(fitted, clip, monkeypatch):
    """Sprite painted into the background in frames 0..4 (more than the nearby frames that
    check a query's weights): sprite queries on frame 0 then follow the background by their
    weight alone, and the fit's flow puts them back on the foreground."""
    from atlas.track import NEARBY_FRAMES, track_points

    _mislay_sprite(fitted.model, monkeypatch, last_frame=NEARBY_FRAMES)
    queries, truth, on_sprite, hidden = _sprite_queries(clip)
    by_weight = track_points(fitted.model, queries)
    assert all(name == "background" for name in by_weight.layers)
    tracks = fitted.track(queries)
    assert [name == "foreground" for name in tracks.layers] == list(on_sprite)
    err = np.linalg.norm(tracks.positions - truth, axis=-1)[on_sprite][~hidden[on_sprite]]
    assert np.median(err) < 1.5


def test_checked_weights_raise_foregrounds_to_their_nearby_median_and_keep_the_sum(monkeypatch):
    """Three layers (background, two foregrounds), the nearby weights given: a foreground
    below 0.5 takes the median of the nearby frames that show the point where that is
    larger; the foregrounds are scaled to sum to at most 1 and the background takes the rest."""
    from types import SimpleNamespace

    import atlas.track as track

    nearby = {  # layer -> [N, 4] weights in the 4 nearest frames (NaN: the point is not shown there)
        1: torch.tensor([[0.9, 0.9, 0.8, 0.0], [0.1, 0.0, 0.0, 0.2], [0.8, 0.8, 0.8, 0.8], [float("nan")] * 4]),
        2: torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.3, float("nan"), float("nan")], [0.6, 0.6, 0.6, 0.6], [0.9] * 4]),
    }
    monkeypatch.setattr(track, "_weight_nearby", lambda model, pixels, t, layer, frames: nearby[layer][pixels[:, 0].long()])
    model = torch.nn.Linear(1, 1)
    model.geom = SimpleNamespace(num_frames=10)
    fitted = torch.tensor([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [0.5, 0.1, 0.4]])
    pixels = torch.stack([torch.arange(4.0), torch.zeros(4)], 1)  # row i reads nearby[layer][i]
    out = track.checked_weights(model, pixels, 5, fitted)
    expected = torch.tensor([
        [0.1, 0.8, 0.1],  # fg1 -> median 0.8 (the lower middle of 0, 0.8, 0.9, 0.9), fg2 stays (0 < 0.1)
        [0.5, 0.2, 0.3],  # fg1 stays (median 0 < 0.2), fg2 -> 0.3 (the two frames that show it)
        [0.0, 0.8 / 1.4, 0.6 / 1.4],  # both raised past a sum of 1: scaled down, background 0
        [0.0, 0.1 / 1.0, 0.9],  # fg1 shown in no nearby frame: kept; fg2 -> 0.9
    ])
    assert torch.allclose(out, expected, atol=1e-6), out
    assert torch.equal(track.checked_weights(model, pixels, 5, fitted[:, :1]), fitted[:, :1])  # background only
