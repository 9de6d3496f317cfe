"""Flow, consistency, masks and the initial transforms against the synthetic ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from atlas import preprocess as preprocess_module
from atlas.errors import AtlasInputError
from atlas.initialise import chain_transforms
from atlas.model import FrameGeometry
from atlas.io import to_uint8
from atlas.preprocess import (colour_refined, compute_flow, consistency, dis_flow, load_raft, motion_masks, preprocess,
                              texture_confidence)
from atlas.synthetic import make_clip


@pytest.fixture(scope="module")
def pre(clip):
    return preprocess(clip.frames, flow="dis")


def test_dis_flow_matches_camera_motion(pre, clip):
    bg = (clip.masks[:-1] < 0.5) & pre.valid_fwd
    true = torch.from_numpy(clip.camera[:-1] - clip.camera[1:])  # background moves against the camera
    err = (pre.flow_fwd - true[:, None, None, :]).norm(dim=-1)[bg]
    assert err.median() < 0.2, err.median()
    assert pre.valid_fwd.float().mean() > 0.85


def test_dis_flow_follows_a_small_sprite(pre, clip):
    """A small moving thing needs the flow's finest pyramid level: at half resolution (DIS's
    medium preset as it comes) the sprite's one-frame error is about 0.43 px here."""
    on = (clip.masks[:-1] > 0.5) & pre.valid_fwd
    true = torch.from_numpy(clip.sprite_centre[1:] - clip.sprite_centre[:-1]).float()
    err = (pre.flow_fwd.float() - true[:, None, None, :]).norm(dim=-1)[on]
    assert err.median() < 0.2, err.median()


@pytest.mark.parametrize("seed", [0, 2])
def test_dis_flow_keeps_a_fast_faint_object_by_its_velocity(seed):
    """A faint sprite 20 px a frame over a busy background: plain frame-to-frame DIS
    (guided=False) loses it in one of the pairs (seed 0: about 17 px off, it takes the
    background's motion; seed 2: in the first pair, about 13 px off, where no earlier pair
    gives a start and the redo from the second pair is what finds it); started from each
    point's velocity in the neighbouring pairs, it keeps it in every pair, both ways."""
    speed = np.array([-20.0, 4.0])
    clip = make_clip(num_frames=6, width=160, height=120, seed=seed, camera_speed=(2.0, 0.5), sprite_speed=tuple(speed))
    frames, on = clip.frames.numpy(), clip.masks.numpy() > 0.5
    mean = frames[on].mean()
    frames = to_uint8(np.where(on[..., None], mean + 0.3 * (frames - mean), frames))
    fwd, bwd = dis_flow(frames)
    both = on[:-1] & on[1:]  # on the sprite in both frames (it moves less than its radius)
    for flows, true in ((fwd, speed), (bwd, -speed)):
        worst = max(float(np.median(np.linalg.norm(f.astype(np.float32)[m] - true, axis=-1))) for f, m in zip(flows, both))
        assert worst < 0.5, worst


def test_consistency_check():
    shift = np.zeros((20, 30, 2), np.float32)
    shift[..., 0] = 2.0
    ok = consistency(shift, -shift)
    assert ok[:, :27].all() and not ok[:, 28:].any()  # pixels leaving the frame are unreliable
    assert not consistency(shift, shift).any()


def test_motion_bootstrap_finds_the_sprite(pre, clip):
    pred, true = pre.masks > 0.5, clip.masks > 0.5
    assert pre.mask_source == "motion"
    assert (pred & true).sum() / (pred | true).sum() > 0.65


def _growing_object(t: int = 20, h: int = 120, w: int = 160, lengths: np.ndarray | None = None):
    """Flows of a camera pan (1.5 px/frame) and an object moving against it that grows
    from a fifth to about three quarters of the frame (or as `lengths`, fractions of the
    width, say: a comb, a spine on the left and teeth that lengthen, a shape no smooth
    camera field fits); textured frames; the object's masks."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    teeth = (np.arange(h) % 20) < 14
    obj = np.zeros((t, h, w), bool)
    for i, length in enumerate((np.linspace(0.25, 0.95, t) if lengths is None else lengths) * w):
        obj[i, :, :16] = True
        obj[i, teeth, : int(length)] = True
    fwd = np.broadcast_to(np.float32([1.5, 0.0]), (t - 1, h, w, 2)).copy()
    bwd = -fwd
    fwd[obj[:-1]] = [-2.0, 0.5]
    bwd[obj[1:]] = [2.0, -0.5]
    valid = np.ones((t - 1, h, w), bool)
    return frames, fwd, bwd, valid, obj


def test_motion_bootstrap_keeps_the_background_when_an_object_fills_the_frame():
    """The camera fit starts each pair from the previous pair's background, so an object
    that covers most of the last frames stays the foreground (a fit from scratch on those
    frames takes the object's motion for the camera's)."""
    frames, fwd, bwd, valid, obj = _growing_object()
    masks = motion_masks(frames, fwd, bwd, valid, valid) > 0
    for i in (0, len(obj) - 1):
        assert (masks[i] & obj[i]).sum() / (masks[i] | obj[i]).sum() > 0.9, i


def test_motion_bootstrap_tells_an_object_that_fills_the_frame_from_a_blurred_background():
    """An object that comes to fill three quarters of the frame while the background's
    flow fails (motion blur: 90% of it inconsistent), then leaves: those pairs' camera fits
    take the object's motion for the camera's, and the background's identity, carried
    from pair to pair, would stay swapped for the rest of the shot. The swap is seen
    between neighbouring pairs, so the object stays the foreground throughout."""
    t = 24
    lengths = np.concatenate([np.linspace(0.25, 0.95, t // 2), np.linspace(0.95, 0.25, t - t // 2)])
    frames, fwd, bwd, valid, obj = _growing_object(t, lengths=lengths)
    blurred = (lengths[:-1] > 0.7)[:, None, None] & ~obj[:-1] & (np.random.default_rng(1).random(valid.shape) < 0.9)
    valid = valid & ~blurred
    masks = motion_masks(frames, fwd, bwd, valid, valid) > 0
    iou = [(masks[i] & obj[i]).sum() / (masks[i] | obj[i]).sum() for i in range(t)]
    assert min(iou) > 0.8, np.round(iou, 2)


def test_motion_bootstrap_follows_an_object_through_frames_where_it_moves_slowly():
    """An object that moves against the camera by 1.2 px a frame for a while and by 4 px
    later sits below the shot's threshold (set by the fast frames) early on; seen in the
    later frames, it is followed back along the flow through the slow ones."""
    t, h, w = 20, 120, 160
    frames, fwd, bwd, valid, obj = _growing_object(t, h, w, lengths=np.full(t, 0.3))
    speed = np.where(np.arange(t - 1) < 8, 1.2, 4.0)
    for i in range(t - 1):
        fwd[i][obj[i]] = [1.5 - speed[i], 0.0]
        bwd[i][obj[i + 1]] = [speed[i] - 1.5, 0.0]
    masks = motion_masks(frames, fwd, bwd, valid, valid) > 0
    iou = [(masks[i] & obj[i]).sum() / (masks[i] | obj[i]).sum() for i in range(t)]
    assert min(iou) > 0.8, np.round(iou, 2)


def test_motion_bootstrap_leaves_out_flow_smeared_past_the_object():
    """Flow carries a moving object's motion a few pixels onto the background around it
    (what it is about to cover, what it uncovers), where the forward-backward check fails
    in both directions: those pixels give no evidence of motion, so the mask keeps to the
    object instead of growing a ring around it."""
    t, h, w = 12, 120, 160
    frames = np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    fwd = np.broadcast_to(np.float32([1.5, 0.0]), (t - 1, h, w, 2)).copy()  # a camera pan
    bwd = -fwd
    kernel = np.ones((11, 11), np.uint8)
    obj, ring = np.zeros((t, h, w), bool), np.zeros((t, h, w), bool)
    for i in range(t):
        obj[i, 40:80, 30 + 5 * i : 70 + 5 * i] = True  # a square moving 5 px a frame against the pan
        ring[i] = cv2.dilate(obj[i].astype(np.uint8), kernel).astype(bool) & ~obj[i]
    for i in range(t - 1):
        fwd[i][obj[i] | ring[i]] = [6.5, 0.0]
        bwd[i][obj[i + 1] | ring[i + 1]] = [-6.5, 0.0]
    valid_fwd, valid_bwd = ~ring[:-1], ~ring[1:]
    masks = motion_masks(frames, fwd, bwd, valid_fwd, valid_bwd) > 0
    iou = [_iou(masks[i], obj[i]) for i in range(t)]
    assert min(iou) > 0.85, np.round(iou, 2)


def _disc_frame(h: int = 120, w: int = 160, r: int = 25):
    """A noisy red disc on a noisy blue-grey background; the disc's mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r**2
    frame = np.where(disc[..., None], [200, 40, 40], [70, 90, 120]) + rng.normal(0, 12, (h, w, 3))
    return np.clip(frame, 0, 255).astype(np.uint8), disc


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_colour_refinement_trims_flow_spill_off_the_object():
    """A motion mask that spills 4 px past the object's edge (a quarter of it) is cut back
    to the object by its colours."""
    frame, disc = _disc_frame()
    spilled = cv2.dilate(disc.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    refined = colour_refined(frame, spilled, "trim")
    assert np.array_equal(colour_refined(frame, spilled, "grow"), spilled)  # nothing of the object's colour to add
    assert _iou(spilled > 0, disc) < 0.8 and _iou(refined > 0, disc) > 0.95


def test_colour_refinement_grows_a_mask_over_the_part_flow_missed():
    """A motion mask missing a band across the object (where its flow looked like the
    camera's) grows over it by its colours; it loses nothing."""
    frame, disc = _disc_frame()
    mask = disc.astype(np.uint8)
    mask[53:67] = 0  # every missing pixel within the band the cut may move in (8 px here)
    grown = colour_refined(frame, mask, "grow")
    assert _iou(mask > 0, disc) < 0.75 and _iou(grown > 0, disc) > 0.95
    assert not (mask & ~grown).any()


@pytest.mark.parametrize("mode", ["grow", "trim"])
def test_colour_refined_motion_bootstrap_on_request(pre, clip, mode):
    """preprocess.colour_refine re-cuts the bootstrap's masks: the synthetic sprite's
    (whose colours differ from the background's) come closer to it."""
    refined = preprocess(clip.frames, flow="dis", colour_refine=mode, long_range_stride=0)
    true = clip.masks > 0.5
    plain, cut = pre.masks > 0, refined.masks > 0
    assert not torch.equal(plain, cut)
    assert _iou(cut.numpy(), true.numpy()) > _iou(plain.numpy(), true.numpy()) + 0.03


def test_colour_refinement_keeps_a_mask_it_would_mostly_remove():
    """Where most of the motion mask has the background's colours (an object coloured like
    its surroundings), the cut would eat it: the motion mask stays as it is."""
    frame, disc = _disc_frame(r=12)
    mask = np.zeros(disc.shape, np.uint8)
    mask[30:90, 40:120] = 1  # the disc is a sixth of it
    assert np.array_equal(colour_refined(frame, mask, "trim"), mask)


def test_colour_refinement_of_a_plate_on_the_analysis_grid(monkeypatch):
    frame, disc = _disc_frame(240, 320, 50)
    spilled = cv2.dilate(disc.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17)))
    monkeypatch.setattr(preprocess_module, "ANALYSIS_SIDE", 160)  # coarsening 2
    refined = colour_refined(frame, spilled, "trim")
    assert refined.shape == disc.shape and _iou(refined > 0, disc) > 0.95


def test_texture_confidence_discounts_flat_regions():
    rng = np.random.default_rng(0)
    frame = np.full((60, 120, 3), 128, np.uint8)
    frame[:, :60] = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    conf = texture_confidence(frame)
    assert conf[:, :50].min() > 0.9 and conf[:, 80:].max() < 0.1


def test_plate_statistics_on_a_coarser_grid_match_full_resolution(monkeypatch):
    """Past ANALYSIS_SIDE the camera fit samples a coarser grid and the texture
    neighbourhood is dilated on block maxima: masks and confidence stay those of the
    full-resolution computation."""
    frames, fwd, bwd, valid, obj = _growing_object(h=240, w=320)
    frames[:, :, 200:] = 128  # a flat region on the right
    full_masks = motion_masks(frames, fwd, bwd, valid, valid) > 0
    full_conf = texture_confidence(frames[0]) > 0.5
    monkeypatch.setattr(preprocess_module, "ANALYSIS_SIDE", 80)  # coarsening 4
    masks = motion_masks(frames, fwd, bwd, valid, valid) > 0
    conf = texture_confidence(frames[0]) > 0.5
    assert (masks != full_masks).mean() < 0.01
    assert (masks & obj).sum() / (masks | obj).sum() > 0.7  # the object found (part of it sits in the flat region)
    assert (conf != full_conf).mean() < 0.03 and conf[:, :180].all() and not conf[:, 240:].any()


def test_background_transforms_follow_the_camera(pre, clip):
    g = FrameGeometry(*clip.frames.shape[:3])
    hs = chain_transforms(pre, g, "homography", "outside")
    p = np.array([[10.0, 12.0], [60.0, 40.0], [33.0, 20.0]])
    for t in range(1, g.num_frames):
        q = (p + 0.5 - [g.width / 2, g.height / 2]) / g.scale
        ph = np.c_[q, np.ones(len(q))] @ hs[t].T
        mapped = ph[:, :2] / ph[:, 2:] * g.scale + [g.width / 2, g.height / 2] - 0.5
        true = p + clip.camera[t] - clip.camera[0]
        # chained pairwise motions drift with the flow's small bias; the fit refines them (test_fit)
        assert np.abs(mapped - true).max() < 1.5, (t, mapped, true)


def test_raft_from_a_local_checkpoint(tmp_path, clip, monkeypatch):
    from torchvision.models.optical_flow import raft_small

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    # no weights anywhere: auto falls back to DIS, an explicit raft request explains how to fetch
    assert compute_flow(clip.frames[:2].numpy(), "auto")[2] == "dis"
    big = torch.nn.functional.interpolate(clip.frames[:3].permute(0, 3, 1, 2), size=(128, 136)).permute(0, 2, 3, 1).numpy()
    with pytest.raises(AtlasInputError, match="needs RAFT weights"):
        compute_flow(big, "raft")
    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    with pytest.raises(AtlasInputError, match="at least 128"):
        compute_flow(clip.frames[:2].numpy(), "raft", str(path))
    assert compute_flow(clip.frames[:2].numpy(), "auto", str(path))[2] == "dis"
    fwd, bwd, method = compute_flow(big, "raft", str(path))
    assert method == "raft" and fwd.shape == (2, 128, 136, 2) and bwd.shape == fwd.shape
    assert np.isfinite(fwd).all()
    torch.save({"junk": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(AtlasInputError, match="not a torchvision RAFT"):
        load_raft(tmp_path / "junk.pth")


def test_sam_needs_a_prompt(clip, tmp_path):
    (tmp_path / "sam.pth").write_bytes(b"")
    with pytest.raises(AtlasInputError, match="--sam-prompt"):
        preprocess(clip.frames[:2], flow="dis", sam_checkpoint=str(tmp_path / "sam.pth"))


def test_sam_masks_from_a_local_checkpoint(tmp_path, clip):
    """A tiny randomly initialised SAM, saved and loaded through the real loader."""
    pytest.importorskip("segment_anything")
    from atlas.preprocess import load_sam, sam_model

    torch.manual_seed(0)
    tiny = sam_model(embed_dim=32, depth=2, num_heads=2, global_attn=[1])
    path = tmp_path / "sam_tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = load_sam(path)
    assert len(loaded.image_encoder.blocks) == 2
    pre = preprocess(clip.frames[:3], flow="dis", sam_checkpoint=str(path), sam_prompt="56,24")
    assert pre.mask_source == "sam" and pre.masks.shape == clip.masks[:3].shape
    assert set(pre.masks.unique().tolist()) <= {0.0, 1.0}
    again = preprocess(clip.frames[:3], flow="dis", sam_checkpoint=str(path), sam_prompt="40,10,70,40")
    assert again.masks.shape == pre.masks.shape
    torch.save({"junk": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(AtlasInputError, match="not a segment-anything"):
        preprocess(clip.frames[:2], flow="dis", sam_checkpoint=str(tmp_path / "junk.pth"), sam_prompt="1,1")
    with pytest.raises(AtlasInputError, match="x,y or x0,y0,x1,y1"):
        preprocess(clip.frames[:2], flow="dis", sam_checkpoint=str(path), sam_prompt="1,2,3")
