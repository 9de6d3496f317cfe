"""`atlas track`'s inputs (query points) and outputs (.csv, .json, Nuke .nk).

Queries: `X,Y[@T]` (T defaults to frame 0), a CSV of `x,y[,t]` rows (a header row is
allowed), or a `NxM[@T]` grid of N columns by M rows of points at the centres of equal
cells of the frame.

Outputs, by extension:
  .csv   one row per track and frame: track, frame, x, y, visible, confidence
  .json  {frames, size, coordinates, tracks: [{query, layer, x, y, visible, confidence}]}
  .nk    a Nuke script with one Tracker4 node holding each track as keyed track_x and
         track_y (Nuke's origin is the bottom-left corner: y_nuke = height - y), keyed on
         the frames where the track is visible, numbered from `first_frame`.
Coordinates are continuous pixels (the top-left pixel spans 0..1) of the fitted frames, or
of the source frames with --source-size.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from .errors import AtlasInputError
from .io import atomic_path
from .track import Tracks

TRACK_FORMATS = (".csv", ".json", ".nk")


def parse_point(text: str) -> tuple[float, float, float]:
    """`X,Y` or `X,Y@T` -> (x, y, t)."""
    m = re.fullmatch(r"\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*(?:@\s*(\d+)\s*)?", text)
    try:
        if m is None:
            raise ValueError
        return float(m.group(1)), float(m.group(2)), float(m.group(3) or 0)
    except ValueError:
        raise AtlasInputError(f"--point expects X,Y or X,Y@FRAME (pixels, frame index), got {text!r}") from None


def parse_grid(text: str, width: float, height: float) -> list[tuple[float, float, float]]:
    """`NxM[@T]` -> N x M points at the centres of equal cells of a width x height frame."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*(?:@\s*(\d+)\s*)?", text)
    if m is None or not 1 <= int(m.group(1)) <= 1000 or not 1 <= int(m.group(2)) <= 1000:
        raise AtlasInputError(f"--grid expects NxM or NxM@FRAME with 1..1000 points a side, got {text!r}")
    n, k, t = int(m.group(1)), int(m.group(2)), float(m.group(3) or 0)
    return [((i + 0.5) * width / n, (j + 0.5) * height / k, t) for j in range(k) for i in range(n)]


def read_points_csv(path: str | Path) -> list[tuple[float, float, float]]:
    """Rows `x,y[,t]` of a CSV file (a first row that is not numbers is a header)."""
    path = Path(path)
    if not path.is_file():
        raise AtlasInputError(f"--points file not found: {path}")
    try:
        rows = [r for r in csv.reader(io.StringIO(path.read_text())) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AtlasInputError(f"--points {path}: not a CSV file ({exc})") from None
    points = []
    for i, row in enumerate(rows):
        try:
            values = [float(c) for c in row]
        except ValueError:
            if i == 0:
                continue  # header
            raise AtlasInputError(f"--points {path}, row {i + 1}: expected numbers x,y[,t], got {','.join(row)!r}") from None
        if len(values) not in (2, 3) or not np.isfinite(values).all() or (len(values) == 3 and values[2] != round(values[2])):
            raise AtlasInputError(f"--points {path}, row {i + 1}: expected x,y or x,y,frame, got {','.join(row)!r}")
        points.append((values[0], values[1], values[2] if len(values) == 3 else 0.0))
    if not points:
        raise AtlasInputError(f"--points {path} holds no points")
    return points


def _csv_text(tracks: Tracks) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["track", "frame", "x", "y", "visible", "confidence"])
    n, T = tracks.visible.shape
    for i in range(n):
        for t in range(T):
            x, y = tracks.positions[i, t]
            w.writerow([i, t, f"{x:.4f}", f"{y:.4f}", int(tracks.visible[i, t]), f"{tracks.confidence[i, t]:.4f}"])
    return out.getvalue()


def _json_text(tracks: Tracks, size: tuple[int, int]) -> str:
    return json.dumps({
        "frames": int(tracks.visible.shape[1]),
        "size": list(size),
        "coordinates": "continuous pixels: the top-left pixel spans 0..1 in x and y; y grows downwards",
        "tracks": [{"query": [float(v) for v in tracks.queries[i]], "layer": tracks.layers[i],
                    "x": [round(float(v), 4) for v in tracks.positions[i, :, 0]],
                    "y": [round(float(v), 4) for v in tracks.positions[i, :, 1]],
                    "visible": [bool(v) for v in tracks.visible[i]],
                    "confidence": [round(float(v), 4) for v in tracks.confidence[i]]} for i in range(len(tracks.layers))],
    })


# Tracker4's table: 31 columns per track (name, kind flags and width as Nuke writes them)
_NUKE_COLUMNS = [
    "5 1 20 enable e", "3 1 75 name name", "2 1 58 track_x track_x", "2 1 58 track_y track_y", "2 1 63 offset_x offset_x",
    "2 1 63 offset_y offset_y", "4 1 27 T T", "4 1 27 R R", "4 1 27 S S", "2 0 45 error error", "1 1 0 error_min error_min",
    "1 1 0 error_max error_max", "1 1 0 pattern_x pattern_x", "1 1 0 pattern_y pattern_y", "1 1 0 pattern_r pattern_r",
    "1 1 0 pattern_t pattern_t", "1 1 0 search_x search_x", "1 1 0 search_y search_y", "1 1 0 search_r search_r",
    "1 1 0 search_t search_t", "2 1 0 key_track key_track", "2 1 0 key_search_x key_search_x", "2 1 0 key_search_y key_search_y",
    "2 1 0 key_search_r key_search_r", "2 1 0 key_search_t key_search_t", "2 1 0 key_track_x key_track_x",
    "2 1 0 key_track_y key_track_y", "2 1 0 key_track_r key_track_r", "2 1 0 key_track_t key_track_t",
    "2 1 0 key_centre_offset_x key_centre_offset_x", "2 1 0 key_centre_offset_y key_centre_offset_y",
]


def _nuke_curve(values: np.ndarray, keep: np.ndarray, first_frame: int) -> str:
    """`{curve xF v v ... xG v ...}`: keys on the kept frames, a new `x` wherever a run starts."""
    parts, previous = [], None
    for t in np.flatnonzero(keep):
        if previous is None or t != previous + 1:
            parts.append(f"x{first_frame + int(t)}")
        parts.append(f"{float(values[t]):.4f}")
        previous = t
    return "{curve " + " ".join(parts) + "}"


def _nk_text(tracks: Tracks, size: tuple[int, int], first_frame: int) -> str:
    width, height = size
    rows = []
    for i in range(len(tracks.layers)):
        keep = tracks.visible[i]
        if not keep.any():  # a track seen nowhere but its query frame still gets its query key
            keep = np.zeros_like(keep)
            keep[int(tracks.queries[i, 2])] = True
        start = first_frame + int(np.flatnonzero(keep)[0])
        x = _nuke_curve(tracks.positions[i, :, 0], keep, first_frame)
        y = _nuke_curve(height - tracks.positions[i, :, 1], keep, first_frame)
        rows.append(f' {{ {{curve K x{start} 1}} "track {i + 1}" {x} {y} {{curve K x{start} 0}} {{curve K x{start} 0}} 1 0 0 '
                    f'{{curve x{start} 0}} 0 0 -15 -15 15 15 -10 -10 10 10 {{}} {{}} {{}} {{}} {{}} {{}} {{}} {{}} {{}} {{}} {{}} }}')
    columns = "\n".join(f" {{ {c} 1 }}" for c in _NUKE_COLUMNS)
    return (f"# atlas track: {len(rows)} tracks, {width}x{height}, frames {first_frame}..{first_frame + tracks.visible.shape[1] - 1}\n"
            "set cut_paste_input [stack 0]\n"
            "push $cut_paste_input\n"
            "Tracker4 {\n"
            f" tracks {{ {{ 1 31 {len(rows)} }}\n{{\n{columns}\n}}\n{{\n" + "\n".join(rows) + "\n}\n}\n"
            f" reference_frame {first_frame + int(tracks.queries[0, 2])}\n"
            f" format \"{width} {height} 0 0 {width} {height} 1 atlas_track\"\n"
            " name AtlasTrack1\n"
            " selected true\n"
            "}\n")


def write_tracks(tracks: Tracks, out: Path, size: tuple[int, int], first_frame: int = 1) -> Path:
    """Write tracks to `out` (.csv, .json or .nk, atomically); `size` is the frames' (width,
    height) in the tracks' pixels; `first_frame` numbers the .nk's frames."""
    suffix = out.suffix.lower()
    if suffix not in TRACK_FORMATS:
        raise AtlasInputError(f"-o {out}: tracks are written as {', '.join(TRACK_FORMATS)}; choose one of those extensions")
    text = _csv_text(tracks) if suffix == ".csv" else _json_text(tracks, size) if suffix == ".json" else _nk_text(tracks, size, first_frame)
    with atomic_path(out, is_dir=False) as tmp:
        tmp.write_text(text)
    return out
