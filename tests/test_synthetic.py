"""The real-texture synthetic clips (atlas.synthetic.make_warped_clip) and their ground truth."""
import numpy as np
import pytest

from atlas.synthetic import make_warped_clip


def textures(seed: int = 0):
    rng = np.random.default_rng(seed)
    background = rng.random((120, 200, 3)).astype(np.float32)
    sprite = rng.random((30, 40, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:30, 0:40]
    alpha = (((xs - 20) / 18.0) ** 2 + ((ys - 15) / 13.0) ** 2 <= 1).astype(np.float32)
    return background, sprite, alpha


@pytest.mark.parametrize("seed", [0, 1])
def test_warped_clip_stays_inside_the_background_and_shows_the_sprite(seed):
    bg, sprite, alpha = textures()
    clip = make_warped_clip(bg, sprite, alpha, num_frames=8, width=64, height=36, seed=seed)
    assert clip.frames.shape == (8, 36, 64, 3) and clip.masks.shape == (8, 36, 64)
    assert clip.bg_maps[..., 0].min() >= 0 and clip.bg_maps[..., 0].max() <= bg.shape[1]
    assert clip.bg_maps[..., 1].min() >= 0 and clip.bg_maps[..., 1].max() <= bg.shape[0]
    cover = (clip.masks > 0.5).float().mean((1, 2))
    assert (cover > 0.02).all() and (cover < 0.5).all()
    # the camera turns and zooms: frame 0's and the last frame's views differ by more than a shift
    step0 = clip.bg_maps[0, 0, 1] - clip.bg_maps[0, 0, 0]
    step1 = clip.bg_maps[4, 0, 1] - clip.bg_maps[4, 0, 0]
    assert abs(np.arctan2(step1[1], step1[0]) - np.arctan2(step0[1], step0[0])) > np.radians(2)
    assert np.linalg.norm(clip.bg_maps[-1, 0, 1] - clip.bg_maps[-1, 0, 0]) < np.linalg.norm(step0)


def test_an_edit_painted_on_a_texture_appears_exactly_where_the_maps_say():
    bg, sprite, alpha = textures()
    clip = make_warped_clip(bg, sprite, alpha, num_frames=6, width=64, height=36)
    assert np.allclose(clip.render().numpy(), clip.frames.numpy())
    painted = bg.copy()
    painted[40:80, 60:140] = (1.0, 0.0, 1.0)
    truth = clip.render(background=painted).numpy()
    for t in range(6):
        changed = np.abs(truth[t] - clip.frames[t].numpy()).max(-1) > 1e-4
        u, v = clip.bg_maps[t, ..., 0], clip.bg_maps[t, ..., 1]
        inside = (u > 61) & (u < 139) & (v > 41) & (v < 79) & (clip.masks[t].numpy() < 0.01)
        outside = (u < 59) | (u > 141) | (v < 39) | (v > 81)
        assert changed[inside].all() and not changed[outside].any()
    # a sprite edit moves with the sprite and nowhere else
    striped = sprite.copy()
    striped[10:20] = 0.0
    truth = clip.render(sprite=striped).numpy()
    changed = np.abs(truth - clip.frames.numpy()).max(-1) > 1e-4
    assert changed.any() and not changed[clip.masks.numpy() == 0].any()
