"""The quality map's flow errors: the next frame's uv map sampled where the flow lands."""
from __future__ import annotations

import pytest
import torch

from atlas.evaluate import evaluate_frame, pixel_grid
from atlas.quality import QualityStats, sample_map


def test_sample_map_is_bilinear_and_exact_on_pixel_centres():
    uv = torch.rand(5, 7, 2, 2)
    centres = pixel_grid(5, 7)
    assert torch.allclose(sample_map(uv, centres), uv.reshape(-1, 2, 2), atol=1e-6)
    # halfway between (2, 1) and (3, 1), then a quarter of the way down to row 2
    expected = 0.75 * (uv[1, 2] + uv[1, 3]) / 2 + 0.25 * (uv[2, 2] + uv[2, 3]) / 2
    assert torch.allclose(sample_map(uv, torch.tensor([[2.5, 1.25]])), expected[None], atol=1e-6)
    # outside the frame, the border's values
    assert torch.allclose(sample_map(uv, torch.tensor([[-3.0, 0.0]])), uv[0, 0][None], atol=1e-6)


def test_sampled_next_frame_uv_matches_the_mapping_at_the_flow_target(fitted):
    """Sampling frame t+1's evaluated map stands in for evaluating the mapping at p + flow:
    the mapping is smooth between pixel centres."""
    model, pre = fitted.model, fitted.cache
    g = model.geom
    xy = pixel_grid(g.height, g.width)
    p2 = (xy + pre.flow_fwd[0].reshape(-1, 2))[pre.valid_fwd[0].reshape(-1)]
    with torch.no_grad():
        direct = model.uv(p2, torch.full((len(p2),), 1))
    sampled = sample_map(evaluate_frame(model, 1).uv, p2)
    px = torch.stack([m.pixels_per_uv for m in model.mappings])
    gap = ((sampled - direct) * px).norm(dim=-1)
    assert len(p2) > 0.5 * g.height * g.width
    assert gap.median() < 0.05 and gap.quantile(0.99) < 0.5  # atlas pixels


def test_quality_statistics_take_frames_in_order(fitted):
    model, pre = fitted.model, fitted.cache
    stats = QualityStats(model, pre, [(8, 8)] * len(model.layer_names))
    frame = torch.zeros(model.geom.height, model.geom.width, 3)
    stats.add(0, evaluate_frame(model, 0), frame)
    with pytest.raises(ValueError, match="in order"):
        stats.add(2, evaluate_frame(model, 2), frame)
