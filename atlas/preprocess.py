"""Preprocessing: optical flow (RAFT or DIS) with forward-backward consistency, and masks.

Masks come from the user (`--masks DIR`), from SAM (`--sam-checkpoint`), or, with
neither, from a motion bootstrap: pixels whose flow disagrees with the dominant camera
motion (a robust quadratic flow field fitted to the whole frame).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import cv2
import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .config import COLOUR_REFINES, FLOW_METHODS
from .errors import AtlasInputError, first_line
from .histogram import LogHistogram
from .io import read_image, sequence_files, to_uint8, unit_float
from .matches import features, matched_start, mutual_matches
from .meta import BundleCorrupt
from .spill import Alloc
from .weights import load_weights

if TYPE_CHECKING:
    from .model import FrameGeometry

ANALYSIS_SIDE = 1024  # longest side (pixels) beyond which shot-wide statistics are taken on a coarser grid


def coarsening(height: int, width: int) -> int:
    """The integer factor that brings a frame's longest side to ANALYSIS_SIDE or below (1 if it is)."""
    return -(-max(height, width) // ANALYSIS_SIDE)


@dataclass
class Preprocessed:
    """Everything the fitter derives from the frames before optimisation."""

    flow_fwd: torch.Tensor  # [T-1, H, W, 2] float16 pixels, frame t -> t+1
    flow_bwd: torch.Tensor  # [T-1, H, W, 2] float16 pixels, frame t+1 -> t
    valid_fwd: torch.Tensor  # [T-1, H, W] bool, forward-backward consistent
    valid_bwd: torch.Tensor  # [T-1, H, W] bool
    masks: torch.Tensor  # [T, H, W] uint8, foreground = 1
    flow_method: str
    mask_source: str  # user | sam | motion
    pairs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 6))  # [M, 6] long-range correspondences (atlas.longrange)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "flow_fwd": self.flow_fwd.half(), "flow_bwd": self.flow_bwd.half(),
            "valid_fwd": self.valid_fwd.view(torch.uint8), "valid_bwd": self.valid_bwd.view(torch.uint8),  # views: no copy of the shot
            "masks": self.masks.to(torch.uint8) * 255, "pairs": self.pairs.float().contiguous(),
        }

    @classmethod
    def read(cls, file: Path, flow_method: str, mask_source: str, geom: "FrameGeometry", alloc: Alloc = np.empty) -> "Preprocessed":
        """Read a cache saved from :meth:`tensors` (a bundle's or a checkpoint's) a frame at a
        time into arrays from `alloc`, so with a spill's a resumed plate is memory-mapped again
        instead of read into RAM. Shapes are checked against the fitted frames; anything that
        is not such a cache is :class:`BundleCorrupt`."""
        T, H, W = geom.num_frames, geom.height, geom.width
        # name: shape, stored value -> kept value, kept dtype
        layout = {"flow_fwd": ((T - 1, H, W, 2), lambda x: x.half(), np.float16),
                  "flow_bwd": ((T - 1, H, W, 2), lambda x: x.half(), np.float16),
                  "valid_fwd": ((T - 1, H, W), lambda x: x != 0, np.bool_), "valid_bwd": ((T - 1, H, W), lambda x: x != 0, np.bool_),
                  "masks": ((T, H, W), lambda x: (x >= 128).to(torch.uint8), np.uint8)}
        arrays = {}
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = set(f.keys())
                for key, (shape, convert, dtype) in layout.items():
                    stored = f.get_slice(key) if key in keys else None
                    if stored is None or tuple(stored.get_shape()) != shape:
                        raise BundleCorrupt(f"the preprocessing cache's {key} is missing or not {list(shape)}")
                    out = alloc(shape, dtype)
                    for i in range(shape[0]):
                        out[i] = convert(stored[i : i + 1])[0].numpy()
                        if dtype == np.float16 and not np.isfinite(out[i]).all():
                            raise BundleCorrupt(f"the preprocessing cache's {key} holds NaN or infinite values")
                    arrays[key] = torch.from_numpy(out)
                pairs = f.get_tensor("pairs").float() if "pairs" in keys else torch.zeros(0, 6)  # caches from before long-range pairs
        except (BundleCorrupt, PermissionError):
            raise
        except Exception as exc:  # safetensors raises several types for truncated or corrupt files
            raise BundleCorrupt(f"cannot read {file.name}: {first_line(exc)}") from None
        if pairs.ndim != 2 or pairs.shape[1] != 6 or not torch.isfinite(pairs).all():
            raise BundleCorrupt("the preprocessing cache's pairs are not finite [M, 6] correspondences")
        return cls(arrays["flow_fwd"], arrays["flow_bwd"], arrays["valid_fwd"], arrays["valid_bwd"], arrays["masks"], flow_method,
                   mask_source, pairs)


# ---------------------------------------------------------------- flow
def grey_u8(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(to_uint8(frame), cv2.COLOR_RGB2GRAY)


def dis_flow(frames: np.ndarray, progress: bool = False, alloc: Alloc = np.empty,
             guided: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV DIS flow between consecutive frames: (fwd, bwd), each [T-1, H, W, 2].

    The medium preset stops its pyramid at half resolution; frames up to ANALYSIS_SIDE run it
    down to full resolution, which roughly halves the one-frame error on small and thin moving
    things (chained mappings accumulate it as drift). Plates keep half resolution, where
    the cost is high and half resolution is still about ANALYSIS_SIDE or finer.

    DIS's coarsest scale cannot see a fast object over a background of its own brightness
    and gives it the background's motion. With `guided`, each pair is also computed from
    two other starts, each pixel keeping whichever flow warps better (_dis_pair): the
    previous pair's flow carried along itself (each point keeping its velocity; the first
    pair, with no earlier one, is redone from the second after the sweep), and, around
    SIFT matches that disagree with the flow, the matches' displacements (atlas.matches),
    for an object the previous pair lost as well. `guided=False` is plain frame-to-frame
    DIS (the benches' chained-flow baseline)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0 if max(frames.shape[1:3]) <= ANALYSIS_SIDE else 1)
    grey = [grey_u8(f) for f in frames]
    fwd, bwd = _flow_arrays(frames.shape, alloc)
    feats = features(grey[0], ANALYSIS_SIDE) if guided else None
    for i in _pairs(len(grey), "flow (DIS)", progress):
        fwd[i] = _dis_pair(dis, grey[i], grey[i + 1], _carried_on(fwd[i - 1], -1.0) if guided and i else None)
        bwd[i] = _dis_pair(dis, grey[i + 1], grey[i], _carried_on(bwd[i - 1], 1.0) if guided and i else None)
        if guided:
            feats, prev = features(grey[i + 1], ANALYSIS_SIDE), feats  # one frame's features held at a time
            src, dst = mutual_matches(prev, feats)
            for flows, a, b, p, q in ((fwd, grey[i], grey[i + 1], src, dst), (bwd, grey[i + 1], grey[i], dst, src)):
                start = matched_start(flows[i], p, q, a, b)
                if start is not None:
                    flows[i] = _dis_pair(dis, a, b, start, flows[i])
    if guided and len(grey) > 2:
        fwd[0] = _dis_pair(dis, grey[0], grey[1], _carried_on(fwd[1], 1.0), fwd[0])
        bwd[0] = _dis_pair(dis, grey[1], grey[0], _carried_on(bwd[1], -1.0), bwd[0])
    return fwd, bwd


FUSE_WINDOW = 9  # px: the neighbourhood whose warping error picks a pixel's flow (_dis_pair)


def _dis_pair(dis: cv2.DISOpticalFlow, a: np.ndarray, b: np.ndarray, start: np.ndarray | None,
              current: np.ndarray | None = None) -> np.ndarray:
    """DIS flow a -> b (from scratch, or `current` when given); with a `start`, DIS also runs
    from it and each pixel takes whichever of the two flows warps b onto a better over its
    neighbourhood: the start is a neighbouring pair's motion, wrong where a moving object
    uncovers or covers the background."""
    plain = dis.calc(a, b, None) if current is None else current.astype(np.float32)
    if start is None:
        return plain
    warm = dis.calc(a, b, start)
    af, bf = a.astype(np.float32), b.astype(np.float32)  # converted once for both warps
    err = [cv2.blur(np.abs(af - warp_sample(bf, f)), (FUSE_WINDOW, FUSE_WINDOW)) for f in (plain, warm)]
    return np.where((err[1] < err[0])[..., None], warm, plain)


def _carried_on(flow: np.ndarray, sign: float) -> np.ndarray:
    """A start for the next pair's flow [H, W, 2] float32: `flow` read where each pixel's
    point came from (sign -1, forward flows) or goes to (sign 1, backward flows) along it."""
    flow = flow.astype(np.float32)
    return warp_sample(flow, sign * flow)


def _pairs(num_frames: int, desc: str, progress: bool) -> Iterable[int]:
    """Indices of consecutive frame pairs, with a progress bar (flow on a long shot takes minutes)."""
    return tqdm(range(num_frames - 1), desc=desc, unit="pair", disable=not progress, leave=False, dynamic_ncols=True)


def _flow_arrays(shape: tuple[int, ...], alloc: Alloc = np.empty) -> tuple[np.ndarray, np.ndarray]:
    """Empty (fwd, bwd) [T-1, H, W, 2] float16 for frames of `shape` [T, H, W, 3], filled
    pair by pair: flows are the largest preprocessing arrays, so they are never stacked from
    a list (which holds them twice), and half precision (a 1/32 px step up to 64 px of
    motion) is finer than any flow method's error."""
    t, h, w = shape[:3]
    return alloc((t - 1, h, w, 2), np.float16), alloc((t - 1, h, w, 2), np.float16)


DIS_MIN_SIDE = 12  # OpenCV's DIS refuses frames smaller on both sides
RAFT_MIN_SIZE = 128  # RAFT's correlation pyramid needs 1/8-resolution features of >= 16 px


def raft_weights_path(explicit: str | None) -> Path | None:
    """A local RAFT checkpoint: the given file, or torchvision's file in the torch hub cache."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise AtlasInputError(f"RAFT weights not found: {p}")
        return p
    from torchvision.models.optical_flow import Raft_Large_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(Raft_Large_Weights.DEFAULT.url).name
    return cached if cached.is_file() else None


def load_raft(path: Path) -> torch.nn.Module:
    """RAFT large or small (detected from the checkpoint), weights loaded without pickle code."""
    from torchvision.models.optical_flow import raft_large, raft_small

    state = load_weights(path, "RAFT weights")
    for build in (raft_large, raft_small):
        model = build(weights=None)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            continue
        return model.eval()
    raise AtlasInputError(f"{path} is not a torchvision RAFT (large or small) checkpoint")


@torch.no_grad()
def raft_flow(frames: np.ndarray, model: torch.nn.Module, device: torch.device, iters: int = 12,
              progress: bool = False, alloc: Alloc = np.empty) -> tuple[np.ndarray, np.ndarray]:
    """RAFT flow between consecutive frames (padded to multiples of 8): (fwd, bwd)."""
    model = model.to(device)
    t, h, w, _ = frames.shape
    ph, pw = (-h) % 8, (-w) % 8

    def net_input(i: int) -> torch.Tensor:  # one frame at a time: the whole clip is never copied
        x = unit_float(torch.from_numpy(frames[i])).permute(2, 0, 1)[None].to(device) * 2.0 - 1.0
        return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")

    fwd, bwd = _flow_arrays(frames.shape, alloc)
    b = net_input(0)
    for i in _pairs(t, "flow (RAFT)", progress):
        a, b = b, net_input(i + 1)
        pair = model(torch.cat([a, b]), torch.cat([b, a]), num_flow_updates=iters)[-1]
        fwd[i] = pair[0, :, :h, :w].permute(1, 2, 0).cpu().numpy()
        bwd[i] = pair[1, :, :h, :w].permute(1, 2, 0).cpu().numpy()
    return fwd, bwd


def warp_sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` at p + flow(p) (bilinear, border replicated); float32 out of any float input."""
    image, flow = image.astype(np.float32, copy=False), flow.astype(np.float32, copy=False)
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def consistency(flow_a: np.ndarray, flow_b: np.ndarray) -> np.ndarray:
    """Forward-backward check (Sundaram et al. 2010): flow_a(p) + flow_b(p + flow_a(p)) ~ 0."""
    flow_a = flow_a.astype(np.float32, copy=False)
    h, w = flow_a.shape[:2]
    back = warp_sample(flow_b, flow_a)
    err = np.sum((flow_a + back) ** 2, axis=-1)
    mag = np.sum(flow_a**2, axis=-1) + np.sum(back**2, axis=-1)
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    inside = (gx + flow_a[..., 0] >= 0) & (gx + flow_a[..., 0] <= w - 1) & (gy + flow_a[..., 1] >= 0) & (gy + flow_a[..., 1] <= h - 1)
    return (err < 0.01 * mag + 0.5) & inside


def compute_flow(frames: np.ndarray, method: str = "auto", raft_weights: str | None = None, device: torch.device | str = "cpu",
                 progress: bool = False, alloc: Alloc = np.empty) -> tuple[np.ndarray, np.ndarray, str]:
    """(fwd, bwd, method actually used) for `auto|raft|dis`; `progress` shows a bar;
    `alloc(shape, dtype)` makes the flows' arrays (atlas.spill)."""
    if method not in FLOW_METHODS:
        raise AtlasInputError(f"--flow must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
    weights = raft_weights_path(raft_weights) if method != "dis" else None
    if method == "raft" and weights is None:
        raise AtlasInputError(
            "--flow raft needs RAFT weights: pass --raft-weights FILE, or fetch them once with "
            "`python -c \"import torchvision; torchvision.models.optical_flow.raft_large(weights='DEFAULT')\"`"
        )
    if weights is not None and min(frames.shape[1:3]) < RAFT_MIN_SIZE:
        if method == "raft":
            raise AtlasInputError(f"--flow raft needs frames of at least {RAFT_MIN_SIZE} pixels on each side; use --flow dis")
        weights = None  # auto: too small for RAFT
    if weights is not None:
        fwd, bwd = raft_flow(frames, load_raft(weights), torch.device(device), progress=progress, alloc=alloc)
        return fwd, bwd, "raft"
    if max(frames.shape[1:3]) < DIS_MIN_SIDE:
        h, w = frames.shape[1:3]
        raise AtlasInputError(f"frames of {w}x{h} are too small for optical flow (at least {DIS_MIN_SIDE} pixels on the longer side); "
                              "enlarge them with --size")
    fwd, bwd = dis_flow(frames, progress, alloc)
    return fwd, bwd, "dis"


# ---------------------------------------------------------------- masks
def read_masks(folder: str | Path, num_frames: int, frame_range: tuple[int, int], size: tuple[int, int],
               allow_gaps: bool = False) -> np.ndarray:
    """User masks [T, H, W] in {0, 1}: one image per source frame (or per fitted frame)."""
    files = sequence_files(str(folder), allow_gaps)
    start, stop = frame_range
    if len(files) >= stop and len(files) != num_frames:
        files = files[start:stop]
    if len(files) != num_frames:
        raise AtlasInputError(f"--masks {folder}: {len(files)} mask images for {num_frames} frames; give one per frame")
    w, h = size
    out = []
    for f in files:
        m = read_image(f)
        m = m[..., :3].mean(-1) if m.shape[2] >= 3 else m[..., 0]
        if m.shape != (h, w):
            src_h, src_w = m.shape
            if abs(src_w / src_h - w / h) > 0.02:
                raise AtlasInputError(f"mask {f} is {src_w}x{src_h}, which does not match the {w}x{h} frames")
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
        out.append((m > 0.5).astype(np.float32))
    return np.stack(out)


def _camera_residual(flow: np.ndarray, valid: np.ndarray, prior: np.ndarray | None = None, step: int = 4,
                     iters: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(|flow - camera flow| [H, W], background weight [H, W] in [0, 1]), the camera flow
    being a quadratic field in (x, y) fitted robustly.

    A quadratic flow covers a homography's pan/zoom/rotation and, unlike one homography,
    the parallax of a second plane (water or ground under a panning camera). The fit is
    iteratively reweighted least squares with Tukey's biweight, so moving objects get
    zero weight after a few rounds. `prior` (a neighbouring frame's background weight,
    warped onto this frame) starts the reweighting where the background was, so an object
    that comes to fill most of the frame is not mistaken for it. The fit samples every
    `step`-th pixel (coarser on a plate, by coarsening: six coefficients need no 4K sample).
    """
    h, w = flow.shape[:2]
    step *= coarsening(h, w)
    flow = flow.astype(np.float32, copy=False)
    x = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    y = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    terms = (x, y, x * x, x * y, y * y)  # [1, W], [H, 1], [1, W], [H, W], [H, 1]: never stacked to [H, W, 6]
    sel = valid[::step, ::step]
    a = np.stack([np.ones(sel.shape, np.float32)] + [np.broadcast_to(t, (h, w))[::step, ::step] for t in terms], -1)[sel]
    f = flow[::step, ::step][sel]
    if len(a) < 12:
        return np.zeros((h, w), np.float32), np.ones((h, w), np.float32)
    start = np.ones(len(a), bool) if prior is None else prior[::step, ::step][sel] > 0.5
    if np.count_nonzero(start) < 12:
        start[:] = True
    coef = np.zeros((6, 2))
    coef[0] = np.median(f[start], axis=0)  # a translation first: unlike least squares, the median ignores a coherent minority
    for _ in range(iters):
        weights = _tukey(np.linalg.norm(a @ coef - f, axis=1), start)
        if np.count_nonzero(weights) < 12:
            weights = np.ones(len(a))
        coef, *_ = np.linalg.lstsq(a * weights[:, None], f * weights[:, None], rcond=None)
        start = weights > 0
    r = np.linalg.norm(a @ coef - f, axis=1)
    camera = coef[0] + sum(c * t[..., None] for c, t in zip(coef[1:], terms))
    res = np.linalg.norm(camera - flow, axis=-1).astype(np.float32)
    return res, _tukey(res, start, r).astype(np.float32)


def _tukey(r: np.ndarray, inliers: np.ndarray, scale_from: np.ndarray | None = None) -> np.ndarray:
    """Tukey's biweight of residuals `r`, cut at 2.5 robust standard deviations (MAD) of
    the inliers' residuals (`scale_from`'s, when given, instead of r's)."""
    ref = r if scale_from is None else scale_from
    cut = 2.5 * max(1.4826 * float(np.median(ref[inliers])), 0.1)
    return np.where(r < cut, (1.0 - (r / cut) ** 2) ** 2, 0.0)


def texture_confidence(frame: np.ndarray) -> np.ndarray:
    """How far flow can be trusted at each pixel [H, W] in [0, 1]: the structure tensor's
    smaller eigenvalue (a corner-ness) over a neighbourhood, relative to the frame's median.

    In flat sky, water or a blank screen the flow is guessed from the surroundings, so its
    disagreement with the camera motion says nothing about motion.
    """
    h, w = frame.shape[:2]
    lam = cv2.cornerMinEigenVal(grey_u8(frame).astype(np.float32) / 255.0, 7, 3)
    s = coarsening(h, w)  # a plate's neighbourhood is dilated on blocks' maxima: the kernel's cost grows with its area
    k = max(3, int(round(min(h, w) / 16 / s)) | 1)
    if s > 1:
        ph, pw = -(-h // s) * s, -(-w // s) * s
        lam = np.pad(lam, ((0, ph - h), (0, pw - w)), mode="edge").reshape(ph // s, s, pw // s, s).max(axis=(1, 3))
    lam = cv2.dilate(lam, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    if s > 1:
        lam = cv2.resize(lam, (pw, ph), interpolation=cv2.INTER_NEAREST)[:h, :w]
    return np.minimum(1.0, lam / (0.5 * float(np.median(lam)) + 1e-9)).astype(np.float32)


def _clean_mask(mask: np.ndarray, min_area_frac: float = 0.002) -> np.ndarray:
    """Open/close, drop specks, fill holes."""
    h, w = mask.shape
    k = max(3, int(round(min(h, w) / 60)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel, iterations=2)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros_like(m)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] >= min_area_frac * h * w:
            keep[labels == i] = 1
    contours, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(keep)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


COLOUR_KEEP = 0.6  # least share of the motion mask a trim must keep to replace it


def colour_refined(frame: np.ndarray, mask: np.ndarray, mode: str = "trim") -> np.ndarray:
    """The motion mask [H, W] uint8 re-cut by colour: OpenCV GrabCut seeded with it, free
    to move its edge within a band around it. `mode` (COLOUR_REFINES) grow: the mask and
    what the cut adds; trim: the cut, or the mask itself where the cut keeps less than
    COLOUR_KEEP of it; none: the mask.

    Flow agrees with the camera on parts of an object that barely move against it (a
    small object at the start of a shot), and spills past its edge into flat background;
    the object's colours claim the first and disown the second. Where object and
    background share their colours the cut eats into the object instead: keeping most of
    the motion mask is what tells a trim from that. Plates are cut on the analysis grid.
    """
    if mode not in COLOUR_REFINES:
        raise ValueError(f"colour refinement {mode!r}; known: {', '.join(COLOUR_REFINES)}")
    if mode == "none" or not mask.any():
        return mask
    h, w = mask.shape
    s = coarsening(h, w)
    img, m = to_uint8(frame), mask
    if s > 1:
        img = cv2.resize(img, (w // s, h // s), interpolation=cv2.INTER_AREA)
        m = (cv2.resize(mask.astype(np.float32), (w // s, h // s), interpolation=cv2.INTER_AREA) > 0.5).astype(np.uint8)
    band = max(3, int(round(min(m.shape) / 16)))
    cut = np.full(m.shape, cv2.GC_BGD, np.uint8)
    cut[cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))) > 0] = cv2.GC_PR_BGD
    cut[m > 0] = cv2.GC_PR_FGD
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's RNG: the same mask for the same frame, in any order
    try:
        cv2.grabCut(np.ascontiguousarray(img), cut, None, np.zeros((1, 65)), np.zeros((1, 65)), 3, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few pixels on one side for a colour model
        return mask
    fg = ((cut == cv2.GC_FGD) | (cut == cv2.GC_PR_FGD)).astype(np.uint8)
    if s > 1:
        fg = (cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    if mode == "grow":
        return fg | mask
    return fg if np.count_nonzero(fg & mask) >= COLOUR_KEEP * np.count_nonzero(mask) else mask


FOLLOW_FRACTION = 1 / 3  # of the mask threshold: where an object seen in a neighbouring frame is followed
SWAP_AGREEMENT = 0.5  # below this share of pixels keeping their side, the background's identity swapped between two pairs


def _swapped_pairs(fwd: np.ndarray, bwd: np.ndarray, valid_fwd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share [T-1] of each pair's pixels that its own camera fit calls background,
    swapped [T-1] bool: pairs whose fit took the object for the background).

    A pair's camera fit takes the motion of most of its pixels; where an object fills the
    frame (and the real background is blurred or flat) that is the object's. Such a pair
    is told by its neighbours: carried along the flow, the background of one pair's fit
    becomes the other's foreground. Counting these swaps through the shot, the pairs on
    the side of the one with the most background (the object at its smallest) keep their
    fit's background; the others have it the wrong way round.
    """
    n = len(fwd)
    share, side = np.zeros(n), np.zeros(n, bool)
    prev = None
    for i in range(n):
        _, weight = _camera_residual(fwd[i], valid_fwd[i])
        share[i] = np.mean(weight > 0.5)
        side[i] = side[i - 1] if i else False
        if prev is not None and valid_fwd[i].any():
            carried = warp_sample(prev, bwd[i - 1])[valid_fwd[i]] > 0.5
            if np.mean((weight[valid_fwd[i]] > 0.5) == carried) < SWAP_AGREEMENT:
                side[i] = not side[i]
        prev = weight
    return share, side != side[int(np.argmax(share))]


def _camera_residuals(fwd: np.ndarray, bwd: np.ndarray, valid_fwd: np.ndarray, valid_bwd: np.ndarray,
                      alloc: Alloc = np.empty) -> tuple[np.ndarray, np.ndarray]:
    """(res [T, H, W] float16, taken [T] bool): each frame's deviation from the camera
    motion, the mean over those of its forward and backward flows that are consistent at
    a pixel (0 where neither is), the background carried through the shot; where every
    pair of a frame took the object for the background (taken), res holds instead 1 on
    that object (the pixels its own camera fit explains).

    A pixel about to be covered or just uncovered by a moving object has no consistent
    flow on that side (it takes the object's motion there); left out, the mask does not
    spread from the object onto the background ahead of it and behind it.

    The sweep starts at the pair whose camera fit explains the most pixels (where moving
    objects are smallest) and goes both ways from it; every other pair's fit starts from
    its neighbour's background weights, warped along the flow, and pairs that took the
    object for the background (_swapped_pairs) restart it.
    """
    n, h, w = fwd.shape[:3]
    share, swapped = _swapped_pairs(fwd, bwd, valid_fwd)
    anchor = int(np.argmax(share))
    # frames that every pair measuring them took the wrong way round
    taken = np.append(swapped, True) & np.insert(swapped, 0, True)
    res = alloc((n + 1, h, w), np.float16)  # pixels of deviation: half precision is plenty
    seen = alloc((n + 1, h, w), np.uint8)  # how many consistent flows measured each pixel
    res[:] = 0
    seen[:] = 0

    def add(i: int, prior: np.ndarray | None) -> np.ndarray:
        """Add pair i's forward residual and its backward flow's (fitted from the forward
        background, warped onto frame i + 1 where bwd lives); returns the background weight."""
        r, weight = _camera_residual(fwd[i], valid_fwd[i], prior)
        r_back, _ = _camera_residual(bwd[i], valid_bwd[i], warp_sample(weight, bwd[i]))
        for j, r_j, valid in ((i, r, valid_fwd[i]), (i + 1, r_back, valid_bwd[i])):
            res[j] += np.where(valid, np.minimum(r_j, 3e4), 0)  # two of them stay within float16
            seen[j] += valid
        return weight

    weight = anchor_weight = add(anchor, None)
    for i in range(anchor + 1, n):
        weight = None if swapped[i] else add(i, None if weight is None else warp_sample(weight, bwd[i - 1]))
    weight = anchor_weight
    for i in range(anchor - 1, -1, -1):
        weight = None if swapped[i] else add(i, None if weight is None else warp_sample(weight, fwd[i]))
    for i in range(n + 1):  # a pixel no consistent flow measured holds 0 already
        res[i] /= np.maximum(seen[i], 1)
    for i in np.flatnonzero(taken):  # the object is what the pair's own fit calls background
        flow, valid = (fwd[i], valid_fwd[i]) if i < n else (bwd[n - 1], valid_bwd[n - 1])
        res[i] = (_camera_residual(flow, valid)[1] > 0.5) & valid
    return res, taken


def motion_masks(frames: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, valid_fwd: np.ndarray, valid_bwd: np.ndarray,
                 threshold: float = 0.0, alloc: Alloc = np.empty, colour_refine: str = "none") -> np.ndarray:
    """Foreground guess per frame [T, H, W] uint8 (1: foreground) from flow that disagrees
    with the camera motion (the background's identity carried through the shot), where the
    frame has the texture to tell.

    `threshold` is the deviation in pixels; 0 picks 0.6 x the clip's 95th-percentile
    residual (at least 0.5 px): moving objects are a minority of pixels, so the 95th
    percentile measures how fast they move relative to the camera. An object does not
    vanish between frames: where a frame's mask holds less than half of its neighbour's,
    carried along the flow, the object moves too slowly there for the shot's threshold,
    and it is followed where it still deviates by FOLLOW_FRACTION of it (one pass
    forwards through the shot, one backwards). `colour_refine` (COLOUR_REFINES) then
    re-cuts each frame's mask by colour (colour_refined). bench/bootstrap_bench.py scores
    the masks against ground truth.
    """
    res, taken = _camera_residuals(fwd, bwd, valid_fwd, valid_bwd, alloc)
    hist = LogHistogram()  # the 95th percentile without a sorted copy of the shot's residuals
    for i, frame in enumerate(frames):
        if not taken[i]:
            res[i] = res[i].astype(np.float32) * texture_confidence(frame)
            hist.add(res[i])
    thr = threshold if threshold > 0 else max(0.5, 0.6 * hist.quantile(0.95))
    # per frame (taken ones hold 0/1); compared as Python floats, so in the residuals' float16
    cut, follow = np.where(taken, 0.5, thr), np.where(taken, 0.5, FOLLOW_FRACTION * thr)
    masks = alloc(res.shape, np.uint8)
    for i, r in enumerate(res):
        masks[i] = _clean_mask(r > float(cut[i]))
    area = masks.reshape(len(masks), -1).sum(axis=1)  # before any following
    n = len(masks)
    for steps in (((i - 1, i, bwd[i - 1]) for i in range(1, n)), ((i + 1, i, fwd[i]) for i in range(n - 2, -1, -1))):
        for src, dst, flow in steps:  # flow lives on dst and points into src
            carried = warp_sample(masks[src], flow) > 0.5
            if area[dst] < 0.5 * np.count_nonzero(carried):
                masks[dst] = _clean_mask(masks[dst].astype(bool) | (carried & (res[dst] > float(follow[dst]))))
    if colour_refine != "none":
        for i, frame in enumerate(frames):
            masks[i] = colour_refined(frame, masks[i], colour_refine)
    return masks


SAM_WINDOW = 14  # SAM's image encoder: windowed attention blocks use 14x14 windows


def sam_model(embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> torch.nn.Module:
    """SAM's architecture (as in segment-anything's builders) with any image-encoder size."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    encoder = ImageEncoderViT(depth=depth, embed_dim=embed_dim, img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              num_heads=num_heads, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn,
                              window_size=SAM_WINDOW, out_chans=256)
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def load_sam(path: Path) -> torch.nn.Module:
    """A SAM checkpoint (ViT-B/L/H or any encoder size), its shape read from the weights,
    loaded without pickle code."""
    state = load_weights(path, "SAM checkpoint")
    try:
        embed = state["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = sum(1 for k in state if k.startswith("image_encoder.blocks.") and k.endswith(".norm1.weight"))
        rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
        heads = embed // rel[0].shape[1]
    except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError):
        raise AtlasInputError(f"{path} is not a segment-anything (SAM) checkpoint") from None
    global_attn = [i for i, r in enumerate(rel) if r.shape[0] != 2 * SAM_WINDOW - 1]
    model = sam_model(embed, depth, heads, global_attn)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise AtlasInputError(f"{path} is not a complete segment-anything (SAM) checkpoint: {first_line(exc)}") from None
    return model


def sam_masks(frames: np.ndarray, checkpoint: str, prompt: str, device: torch.device | str = "cpu") -> np.ndarray:
    """SAM masks: prompted on frame 0 by a point `x,y` or a box `x0,y0,x1,y1` (pixels of the
    fitted frames), then tracked by prompting each next frame with the previous mask's box."""
    try:
        from segment_anything import SamPredictor
    except ImportError:
        raise AtlasInputError("--sam-checkpoint needs segment-anything: pip install -e '.[sam]'") from None
    path = Path(checkpoint)
    if not path.is_file():
        raise AtlasInputError(f"SAM checkpoint not found: {path}")
    try:
        coords = [float(v) for v in prompt.split(",")]
    except ValueError:
        coords = []
    if len(coords) not in (2, 4):
        raise AtlasInputError(f"--sam-prompt expects x,y or x0,y0,x1,y1 in pixels, got {prompt!r}")
    predictor = SamPredictor(load_sam(path).to(device).eval())
    out, box = [], None
    for i, frame in enumerate(frames):
        predictor.set_image(to_uint8(frame))
        if i == 0 and len(coords) == 2:
            masks, scores, _ = predictor.predict(point_coords=np.array([coords]), point_labels=np.array([1]), multimask_output=True)
        else:
            masks, scores, _ = predictor.predict(box=np.array(coords if i == 0 else box), multimask_output=False)
        m = masks[int(np.argmax(scores))].astype(np.float32)
        out.append(m)
        ys, xs = np.nonzero(m)
        if len(xs):
            pad_x, pad_y = 0.1 * (xs.max() - xs.min() + 1), 0.1 * (ys.max() - ys.min() + 1)
            box = [xs.min() - pad_x, ys.min() - pad_y, xs.max() + pad_x, ys.max() + pad_y]
        elif box is None:
            box = coords if len(coords) == 4 else [0, 0, frame.shape[1], frame.shape[0]]
    return np.stack(out)


def preprocess(
    frames: torch.Tensor,
    flow: str = "auto",
    masks_dir: str | None = None,
    frame_range: tuple[int, int] | None = None,
    motion_threshold: float = 0.0,
    raft_weights: str | None = None,
    sam_checkpoint: str | None = None,
    sam_prompt: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    allow_gaps: bool = False,
    long_range_stride: int = 0,
    long_range_samples: int = 2048,
    seed: int = 0,
    alloc: Alloc = np.empty,
    colour_refine: str = "none",
) -> Preprocessed:
    """Flow + consistency + masks for frames [T, H, W, 3] (uint8 or float), and long-range correspondences
    up to `long_range_stride` frames apart (atlas.longrange; 0: none); `progress` shows
    the flows' bars; `alloc(shape, dtype)` makes the shot-sized arrays (atlas.spill);
    `colour_refine` re-cuts motion-bootstrap masks by colour (motion_masks)."""
    from .longrange import long_range_pairs

    arr = frames.numpy()
    t, h, w, _ = arr.shape
    user_masks = read_masks(masks_dir, t, frame_range or (0, t), (w, h), allow_gaps) if masks_dir is not None else None
    fwd, bwd, method = compute_flow(arr, flow, raft_weights, device, progress, alloc)
    valid_fwd, valid_bwd = alloc(fwd.shape[:3], bool), alloc(fwd.shape[:3], bool)
    for i in range(t - 1):
        valid_fwd[i], valid_bwd[i] = consistency(fwd[i], bwd[i]), consistency(bwd[i], fwd[i])
    if user_masks is not None:
        masks, source = user_masks, "user"
    elif sam_checkpoint is not None:
        if not sam_prompt:
            raise AtlasInputError("--sam-checkpoint needs --sam-prompt x,y or x0,y0,x1,y1 on the first frame")
        masks, source = sam_masks(arr, sam_checkpoint, sam_prompt, device), "sam"
    else:
        masks, source = motion_masks(arr, fwd, bwd, valid_fwd, valid_bwd, motion_threshold, alloc, colour_refine), "motion"
    pairs = long_range_pairs(arr, fwd, bwd, valid_fwd, long_range_stride, long_range_samples, seed, progress)
    return Preprocessed(
        torch.from_numpy(fwd), torch.from_numpy(bwd), torch.from_numpy(valid_fwd), torch.from_numpy(valid_bwd),
        torch.from_numpy(masks if masks.dtype == np.uint8 else (masks > 0.5).astype(np.uint8)), method, source, torch.from_numpy(pairs),
    )
