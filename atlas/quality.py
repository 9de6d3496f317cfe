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
from .histogram import LogHistogram
from .model import LayeredAtlas
from .preprocess import Preprocessed

FLOW_SCALE_PX = 2.0
RECON_SCALE = 0.1

def sample_map(uv: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """A frame's [H, W, layers, 2] uv map bilinearly sampled at [N, 2] pixel positions
    (pixel centres at integers, clamped to the frame): [N, layers, 2]."""
    h, w, n_layers, _ = uv.shape
    grid = torch.stack([xy[:, 0] * (2 / max(w - 1, 1)) - 1, xy[:, 1] * (2 / max(h - 1, 1)) - 1], -1)
    img = uv.reshape(h, w, n_layers * 2).permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(img, grid[None, None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].T.contiguous().reshape(-1, n_layers, 2)  # contiguous: a transposed view makes later per-point reductions stride across the frame


class QualityStats:
    """Per-texel flow and reconstruction errors of each layer, accumulated one frame at a
    time (a fit never holds every frame's maps); :meth:`result` gives the maps."""

    def __init__(self, model: LayeredAtlas, pre: Preprocessed, sizes: list[tuple[int, int]]) -> None:
        g = model.geom
        self.model, self.pre, self.sizes = model, pre, sizes
        ys, xs = torch.meshgrid(torch.arange(g.height), torch.arange(g.width), indexing="ij")
        self.xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()
        self.px = torch.stack([m.pixels_per_uv.cpu() for m in model.mappings])
        self.sums = [np.zeros((2, h, w), np.float32) for (w, h) in sizes]  # float32: 12 bytes a texel with the counts
        self.counts = [np.zeros((h, w), np.float32) for (w, h) in sizes]
        # per layer: the flow errors' exact sum, and their histogram (for the 95th percentile)
        self.flow_sum = [0.0 for _ in sizes]
        self.flow_hist = [LogHistogram() for _ in sizes]
        self._pending: tuple[int, FrameMaps, torch.Tensor] | None = None

    @torch.no_grad()
    def add(self, t: int, fm: FrameMaps, frame: torch.Tensor) -> None:
        """Frame t's maps and its source image [H, W, 3], frames in order. A frame's flow
        error needs the next frame's uv map (sampled where the flow lands, so the mapping is
        evaluated once per pixel, not again at p + flow), so each frame is accumulated when
        the next one arrives, and the last by :meth:`result`."""
        recon = (fm.rgb - frame).abs().mean(-1).reshape(-1)
        if self._pending is not None:
            prev_t, prev_fm, prev_recon = self._pending
            if t != prev_t + 1:
                raise ValueError(f"quality statistics take frames in order: frame {t} after {prev_t}")
            self._accumulate(prev_t, prev_fm, prev_recon, fm.uv)
        self._pending = (t, fm, recon)

    def _accumulate(self, t: int, fm: FrameMaps, recon: torch.Tensor, next_uv: torch.Tensor | None) -> None:
        g, n_layers = self.model.geom, len(self.sizes)
        flow_err = torch.full((g.height * g.width, n_layers), float("nan"))
        if next_uv is not None:
            valid = self.pre.valid_fwd[t].reshape(-1)
            p2 = (self.xy + self.pre.flow_fwd[t].reshape(-1, 2))[valid]
            uv2 = sample_map(next_uv, p2)
            flow_err[valid] = ((uv2 - fm.uv.reshape(-1, n_layers, 2)[valid]) * self.px).norm(dim=-1)
        for i, (w, h) in enumerate(self.sizes):
            seen = fm.weights[..., i].reshape(-1) > 0.5
            uv = fm.uv[..., i, :].reshape(-1, 2)[seen]
            tx = (uv[:, 0] * w).floor().long().clamp(0, w - 1)
            texel = (uv[:, 1] * h).floor().long().clamp(0, h - 1) * w + tx
            fe = flow_err[seen, i]
            ok = torch.isfinite(fe)
            # index_add_ in place: the same sums as np.add.at, a few times faster on a plate's pixels
            torch.from_numpy(self.sums[i][0]).view(-1).index_add_(0, texel[ok], fe[ok])
            torch.from_numpy(self.sums[i][1]).view(-1).index_add_(0, texel, recon[seen])
            torch.from_numpy(self.counts[i]).view(-1).index_add_(0, texel, torch.ones(len(texel)))
            err = fe[ok].numpy()
            self.flow_sum[i] += float(err.sum(dtype=np.float64))
            self.flow_hist[i].add(err)

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
        """({layer: [h, w] unreliability in [0, 1]}, {layer: summary numbers}), after the last frame."""
        if self._pending is not None:  # the last frame: no flow onward
            self._accumulate(*self._pending, None)
            self._pending = None
        out, summary = {}, {}
        for i, name in enumerate(self.model.layer_names):
            c = np.maximum(self.counts[i], 1)
            score = np.maximum(self.sums[i][0] / c / FLOW_SCALE_PX, self.sums[i][1] / c / RECON_SCALE)
            out[name] = np.clip(score, 0.0, 1.0).astype(np.float32)
            n = self.flow_hist[i].total
            covered = self.counts[i] > 0
            summary[name] = {
                "flow_consistency_px_mean": round(self.flow_sum[i] / n, 4) if n else None,
                "flow_consistency_px_p95": round(self.flow_hist[i].quantile(0.95), 4) if n else None,
                "unreliable_fraction": round(float((out[name][covered] > 0.5).mean()), 4) if covered.any() else None,
            }
        return out, summary
