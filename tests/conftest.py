"""Shared fixtures: a synthetic clip with ground truth and one short fit reused by tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atlas.io import Video
from atlas.synthetic import SyntheticClip, make_clip

REPO = Path(__file__).resolve().parent.parent
DAVIS = REPO.parent / "shared" / "data" / "davis"


@pytest.fixture(scope="session")
def clip() -> SyntheticClip:
    return make_clip(num_frames=8, width=80, height=60, seed=0)


@pytest.fixture(scope="session")
def fitted(clip: SyntheticClip, tmp_path_factory: pytest.TempPathFactory):
    """A 350-step fit of the synthetic clip (about half a minute on 2 CPU cores)."""
    import atlas

    out = tmp_path_factory.mktemp("fit") / "clip.atlas"
    video = Video(clip.frames, clip.fps, "synthetic", (0, clip.frames.shape[0]))
    return atlas.fit(video, out, "fast", ["train.checkpoint_every=0"], iters=350, quiet=True, seed=0)


@pytest.fixture()
def tiny_video() -> Video:
    """A clip small enough for CLI round trips that fit for a handful of steps."""
    c = make_clip(num_frames=4, width=40, height=32, seed=1)
    return Video(c.frames, c.fps, "tiny", (0, 4))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
