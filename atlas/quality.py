"""Where the atlas mapping is unreliable, projected onto each layer's atlas.

Per pixel, two errors: how far the pixel's flow target lands from it in the atlas
(flow-consistency error, atlas pixels) and the reconstruction error. Each is averaged per
atlas texel over every pixel that shows that layer (weight > 0.5). The map written for a
layer is unreliability = max(flow_px / 2, recon / 0.1), clipped to [0, 1]: 1 means an
edit there will likely swim or smear (2 atlas px of drift, or 10% colour error).
"""
from __future__ import annotations

import numpy as np
import torch

from .evaluate import FrameMaps
from .model import LayeredAtlas
from .preprocess import Preprocessed

FLOW_SCALE_PX = 2.0
RECON_SCALE = 0.1


@torch.no_grad()
def quality_maps(model: LayeredAtlas, maps: list[FrameMaps], frames: torch.Tensor, pre: Preprocessed,
                 sizes: list[tuple[int, int]]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """({layer: [h, w] unreliability in [0, 1]}, {layer: summary numbers})."""
    g = model.geom
    device = next(model.parameters()).device
    ys, xs = torch.meshgrid(torch.arange(g.height), torch.arange(g.width), indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()
    n_layers = len(model.layer_names)
    sums = [np.zeros((2, h, w)) for (w, h) in sizes]
    counts = [np.zeros((h, w)) for (w, h) in sizes]
    flow_all: list[list[np.ndarray]] = [[] for _ in range(n_layers)]  # float32: one value per pixel of the shot
    for t, fm in enumerate(maps):
        recon = (fm.rgb - frames[t]).abs().mean(-1).reshape(-1)
        flow_err = torch.full((g.height * g.width, n_layers), float("nan"))
        if t < g.num_frames - 1:
            valid = pre.valid_fwd[t].reshape(-1)
            p2 = (xy + pre.flow_fwd[t].reshape(-1, 2))[valid]
            uv2 = model.uv(p2.to(device), torch.full((len(p2),), t + 1, device=device)).cpu()
            px = torch.stack([m.pixels_per_uv.cpu() for m in model.mappings])
            flow_err[valid] = ((uv2 - fm.uv.reshape(-1, n_layers, 2)[valid]) * px).norm(dim=-1)
        for i, (w, h) in enumerate(sizes):
            seen = fm.weights[..., i].reshape(-1) > 0.5
            uv = fm.uv[..., i, :].reshape(-1, 2)[seen]
            tx = (uv[:, 0] * w).floor().long().clamp(0, w - 1).numpy()
            ty = (uv[:, 1] * h).floor().long().clamp(0, h - 1).numpy()
            fe = flow_err[seen, i].numpy()
            ok = np.isfinite(fe)
            np.add.at(sums[i][0], (ty[ok], tx[ok]), fe[ok])
            np.add.at(sums[i][1], (ty, tx), recon[seen].numpy())
            np.add.at(counts[i], (ty, tx), 1)
            flow_all[i].append(fe[ok])
    out, summary = {}, {}
    for i, name in enumerate(model.layer_names):
        c = np.maximum(counts[i], 1)
        score = np.maximum(sums[i][0] / c / FLOW_SCALE_PX, sums[i][1] / c / RECON_SCALE)
        out[name] = np.clip(score, 0.0, 1.0).astype(np.float32)
        fe = np.concatenate(flow_all[i]) if flow_all[i] else np.zeros(0, np.float32)
        flow_all[i] = []
        covered = counts[i] > 0
        summary[name] = {
            # numpy's quantile partitions one copy; torch's sorts and keeps int64 indices (3x the memory)
            "flow_consistency_px_mean": round(float(fe.mean(dtype=np.float64)), 4) if len(fe) else None,
            "flow_consistency_px_p95": round(float(np.quantile(fe, 0.95)), 4) if len(fe) else None,
            "unreliable_fraction": round(float((out[name][covered] > 0.5).mean()), 4) if covered.any() else None,
        }
    return out, summary
