"""StableVideo-style editing: keyframes edited one after another, each started from what the
atlas already knows, then fused into the atlas by a small aggregation network.

Per edited layer (each with its own prompt):
1. keyframes: the first frame, then either every `stride` frames or greedily the frame that
   shows most of the layer's atlas not yet seen, until `coverage` of it is seen;
2. the first keyframe is re-generated with a structure-conditioned model (ControlNet on its
   edges) and splatted into a partial atlas;
3. each next keyframe starts from the partial atlas rendered into it (source pixels where
   the atlas is still empty) and is completed by SDEdit at `next_strength`, then splatted
   into its own partial atlas;
4. an aggregation network (a few convolutions on the stacked partial atlases) is trained to
   turn partial atlases of the *source* keyframes into the source atlas, then applied to the
   edited partial atlases: the fused atlas is the edit;
5. texels the video shows that no keyframe covered, if near covered ones, are inpainted
   from them (thin gaps would otherwise show the source as seams).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError
from propagation.render import matted_maps
from propagation.sample import sample
from propagation.splat import SplatAccumulator, splat_layer

from .diffuse import PromptEdit, sdedit

VISIBLE = 0.5  # a pixel belongs to a layer's keyframe edit where its weight exceeds this
GAP_REACH = 8.0  # texels: gaps between keyframes up to this far from covered texels are filled


def choose_keyframes(bundle: AtlasBundle, layer: int, stride: int | None = None, coverage: float = 0.95,
                     max_keyframes: int = 8) -> list[int]:
    """Frame indices in time order, starting with frame 0."""
    n = bundle.num_frames
    if stride is not None:
        if stride < 1:
            raise AtlasInputError(f"--keyframe-stride must be at least 1, got {stride}")
        return list(range(0, n, stride))
    grid = 64  # coverage is counted on a coarse grid over the atlas
    seen = []
    for t in range(n):
        maps = bundle.frame_maps(t)
        uv = maps.uv[..., layer, :][maps.weights[..., layer] > VISIBLE]
        cells = (uv.clamp(0, 1 - 1e-6) * grid).long()
        seen.append(set((cells[:, 1] * grid + cells[:, 0]).tolist()))
    total = set().union(*seen)
    chosen, covered = [0], set(seen[0])
    while len(chosen) < max_keyframes and len(covered) < coverage * len(total):
        gain, best = max((len(seen[t] - covered), t) for t in range(n) if t not in chosen)
        if gain == 0:
            break
        chosen.append(best)
        covered |= seen[best]
    return sorted(chosen)


class AggregationNet(nn.Module):
    """Partial atlases [B, 4K, h, w] (premultiplied RGB + alpha each) -> RGB. Starts as their
    alpha-weighted average and learns a correction (the last layer is zero-initialised)."""

    def __init__(self, partials: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4 * partials + 3, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        b, c, h, w = stack.shape
        parts = stack.reshape(b, c // 4, 4, h, w)
        alpha = parts[:, :, 3:]
        mean = (parts[:, :, :3]).sum(1) / alpha.sum(1).clamp_min(1e-6)
        return (mean + self.net(torch.cat([stack, mean], dim=1))).clamp(0, 1)


def _stack(partials: list[np.ndarray]) -> torch.Tensor:
    """[1, 4K, h, w]: each partial atlas as premultiplied RGB and alpha."""
    chans = [np.concatenate([p[..., :3] * p[..., 3:], p[..., 3:]], axis=-1) for p in partials]
    return torch.from_numpy(np.concatenate(chans, axis=-1)).permute(2, 0, 1)[None].float()


def train_aggregation(source_partials: list[np.ndarray], target: np.ndarray, mask: np.ndarray, steps: int, seed: int,
                      crop: int = 128, device: torch.device | str = "cpu", quiet: bool = True) -> AggregationNet:
    """Fit the network to map source partial atlases to the source atlas on `mask` texels."""
    torch.manual_seed(seed)
    net = AggregationNet(len(source_partials)).to(device)
    x = _stack(source_partials).to(device)
    y = torch.from_numpy(target[..., :3]).permute(2, 0, 1)[None].float().to(device)
    m = torch.from_numpy(mask.astype(np.float32))[None, None].to(device)
    h, w = target.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="training the aggregation network", disable=quiet, leave=False):
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        win = (..., slice(y0, y0 + ch), slice(x0, x0 + cw))
        loss = ((net(x[win]) - y[win]).abs() * m[win]).sum() / m[win].sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _splat(width: int, height: int, maps, layer: int, image: torch.Tensor) -> np.ndarray:
    """RGBA partial atlas of one keyframe's pixels on `layer`."""
    acc = SplatAccumulator(width, height)
    splat_layer(acc, maps, layer, image, torch.ones(image.shape[:2]), min_weight=VISIBLE)
    return acc.rgba()


def fill_gaps(rgb: np.ndarray, covered: np.ndarray, seen: np.ndarray, reach: float = GAP_REACH) -> tuple[np.ndarray, np.ndarray]:
    """Texels the video shows but no keyframe covered, within `reach` texels of the covered
    part, take the mean colour of their already-known neighbours, ring by ring outwards, so
    thin gaps between keyframes do not show the source as seams. Returns the filled colours
    and the texels now edited."""
    fill = seen & ~covered & (cv2.distanceTransform((~covered).astype(np.uint8), cv2.DIST_L2, 5) <= reach)
    out, known = rgb.copy(), covered.copy()
    while (fill & ~known).any():
        total = cv2.boxFilter(out * known[..., None], -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(known.astype(np.float32), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        ring = fill & ~known & (count > 0)
        if not ring.any():
            break
        out[ring] = total[ring] / count[ring][:, None]
        known |= ring
    return out, known


def stablevideo(bundle: AtlasBundle, source: torch.Tensor, settings: dict[str, PromptEdit], keyframe_stride: int | None = None,
                max_keyframes: int = 8, coverage: float = 0.95, next_strength: float | None = None,
                fusion_steps: int = 300, matte: str = "guided") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({layer: RGBA edit}, {"<layer>_<frame>": generated keyframe}) for layers edited by
    prompt; each keyframe's pixels go to the layers its `matte` gives them
    (propagation.render.matted_maps), as in the final render."""
    edits, generated = {}, {}
    for name, edit in settings.items():
        layer = bundle.layer_names.index(name)
        tex = bundle.textures[name]
        h, w = tex.shape[:2]
        frames = choose_keyframes(bundle, layer, keyframe_stride, coverage, max_keyframes)
        union = np.zeros((h, w, 4), np.float32)
        edited_parts, source_parts = [], []
        for i, t in enumerate(frames):
            maps = matted_maps(bundle, t, source[t], matte)
            start = source[t].numpy()
            if i > 0:  # what the atlas already holds, rendered into this keyframe
                known = sample(union, maps.uv[..., layer, :])
                a = known[..., 3:].numpy() * (maps.weights[..., layer : layer + 1].numpy() > VISIBLE)
                start = start + a * (maps.shade(known[..., :3]).clamp(0.0, 1.0).numpy() - start)
            strength = edit.strength if i == 0 else (next_strength or 0.5 * edit.strength)
            out = sdedit(edit, np.ascontiguousarray(start, dtype=np.float32), strength=strength, seed_offset=i)
            generated[f"{name}_{t:04d}"] = out
            part = _splat(w, h, maps, layer, torch.from_numpy(out))
            edited_parts.append(part)
            source_parts.append(_splat(w, h, maps, layer, source[t]))
            fresh = (part[..., 3:] > 0) & (union[..., 3:] == 0)
            union = np.where(fresh, part, union)
        covered = union[..., 3] > 0
        device = edit.runtime.torch_device
        net = train_aggregation(source_parts, tex, covered & (tex[..., 3] > 0.5), fusion_steps, edit.seed, device=device,
                                quiet=edit.runtime.quiet)
        with torch.no_grad():
            fused = net(_stack(edited_parts).to(device))[0].permute(1, 2, 0).cpu().numpy()
        fused, edited = fill_gaps(fused, covered, tex[..., 3] > 0.5)
        edits[name] = np.concatenate([fused, edited[..., None].astype(np.float32)], axis=-1)
    return edits, generated
