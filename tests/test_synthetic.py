"""The real-texture synthetic clips (atlas.synthetic.make_warped_clip) and their ground truth."""
import cv2
import numpy as np
import pytest
import torch

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


def test_a_keyframe_carried_along_the_true_motion_is_each_frame_where_frame_0_shows_it():
    bg, sprite, alpha = (cv2.GaussianBlur(x, (0, 0), 2.0) if x.ndim == 3 else x for x in textures())  # smooth: resampling is near exact
    clip = make_warped_clip(bg, sprite, alpha, num_frames=6, width=64, height=36)
    frames = clip.frames.numpy()
    for t in range(1, 6):
        carried = clip.carried_keyframe(clip.frames[0], t).numpy()
        assert np.sqrt(np.mean((carried - frames[t]) ** 2)) < 0.01
    # a black keyframe shows where frame 0 sees each point: black there, the frame's own colours where it does not
    m, t = clip.motion, 5
    carried = clip.carried_keyframe(torch.zeros_like(clip.frames[0]), t).numpy()
    bg_at_0 = m.bg_pixel(0, clip.bg_maps[t].astype(np.float64))
    fg_at_0 = m.fg_pixel(0, clip.fg_maps[t].astype(np.float64))
    inside = lambda p, margin: ((p >= margin) & (p <= np.array([64, 36]) - margin)).all(-1)
    ix = np.clip(bg_at_0.astype(int), 0, [63, 35])
    covered0 = clip.masks[0].numpy()[ix[..., 1], ix[..., 0]]
    background, sprite_px = clip.masks[t].numpy() == 0, clip.masks[t].numpy() == 1
    assert np.all(carried[background & inside(bg_at_0, 2) & (covered0 == 0)] == 0)
    unseen = background & (~inside(bg_at_0, -2) | (covered0 == 1))
    assert unseen.any() and np.allclose(carried[unseen], frames[t][unseen])
    assert np.all(carried[sprite_px & inside(fg_at_0, 2)] == 0)


def test_true_tracks_follow_the_texels_they_start_on():
    bg, sprite, alpha = textures()
    clip = make_warped_clip(bg, sprite, alpha, num_frames=6, width=64, height=36, seed=1)
    rng = np.random.default_rng(0)
    queries = np.concatenate([rng.uniform([2, 2], [62, 34], (200, 2)), np.full((200, 1), 2.0)], 1)
    pos, occluded, on_fg = clip.true_tracks(queries)
    assert on_fg.any() and (~on_fg).any()
    assert np.allclose(pos[:, 2], queries[:, :2], atol=1e-4)  # each track passes through its query
    for t in range(6):
        ix = np.clip(pos[:, t].astype(int), 0, [63, 35])
        seen = ~occluded[:, t] & (pos[:, t] > 1).all(1) & (pos[:, t] < [63, 35]).all(1)
        # the texel under the tracked point stays the texel it started on (maps are per pixel: 1 texel of slack)
        for maps, sel in ((clip.fg_maps, on_fg), (clip.bg_maps, ~on_fg)):
            start = maps[2][queries[:, 1].astype(int), queries[:, 0].astype(int)]
            now = maps[t][ix[:, 1], ix[:, 0]]
            assert np.abs(now - start)[sel & seen].max() < 3.0
    assert not occluded[on_fg][:, 2].any() and occluded[~on_fg].any()  # background points go under the sprite


def test_the_motions_invert_exactly():
    bg, sprite, alpha = textures()
    m = make_warped_clip(bg, sprite, alpha, num_frames=5, width=64, height=36, bend=0.2).motion
    texels = np.random.default_rng(1).uniform([0, 0], [40, 30], (50, 2))
    for t in range(5):
        assert np.allclose(m.fg_texel(t, m.fg_pixel(t, texels)), texels, atol=1e-9)
        assert np.allclose(m.bg_texel(t, m.bg_pixel(t, texels)), texels, atol=1e-9)
    assert not np.allclose(m.fg_pixel(2, texels), m.fg_pixel(0, texels))


def test_true_tracks_of_queries_on_several_frames_and_of_none():
    bg, sprite, alpha = textures()
    clip = make_warped_clip(bg, sprite, alpha, num_frames=5, width=64, height=36)
    queries = np.array([[10.5, 8.5, 0.0], [10.5, 8.5, 3.0], [40.5, 20.5, 4.0]])
    pos, occluded, _ = clip.true_tracks(queries)
    assert np.allclose(pos[np.arange(3), queries[:, 2].astype(int)], queries[:, :2], atol=1e-4)
    pos, occluded, on_fg = clip.true_tracks(np.zeros((0, 3)))
    assert pos.shape == (0, 5, 2) and occluded.shape == (0, 5) and on_fg.shape == (0,)


def test_written_plate_is_the_clip_at_plate_size(tmp_path):
    """write_plate renders make_clip's scene frame by frame to disk, moving the same
    fraction of the frame per frame at any size."""
    from atlas.io import read_video
    from atlas.synthetic import make_clip, write_plate

    pattern = write_plate(tmp_path / "p", num_frames=3, width=120, height=64, ext="png")
    video = read_video(pattern)
    assert video.frames.shape == (3, 64, 120, 3) and video.frames.dtype == torch.uint8
    same = make_clip(num_frames=3, width=120, height=64, camera_speed=(120 / 200, 120 / 600), sprite_speed=(-1.0, 120 / 300))
    assert (video.frames.float() / 255 - same.frames).abs().max() <= 0.5 / 255 + 1e-6
    assert not torch.equal(video.frames[0], video.frames[-1])
