"""Evaluate a fitted model on whole frames (reconstruction, uv maps, layer weights)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import LayeredAtlas
from .shading import shade, unshade


@dataclass
class FrameMaps:
    """Per-pixel results for one frame."""

    rgb: torch.Tensor | None  # [H, W, 3] reconstruction (None when evaluated without colour)
    uv: torch.Tensor  # [H, W, layers, 2] atlas coordinates
    weights: torch.Tensor  # [H, W, layers] compositing weight of each layer (background first)
    gain: torch.Tensor | None = None  # [H, W, 3] the frame's shading (atlas.shading); None: no shading
    offset: torch.Tensor | None = None  # [3]

    def shade(self, rgb: torch.Tensor) -> torch.Tensor:
        """Atlas colours [H, W, 3] as this frame shows them."""
        return shade(rgb, self.gain, self.offset)

    def unshade(self, rgb: torch.Tensor) -> torch.Tensor:
        """This frame's colours [H, W, 3] as the atlas holds them."""
        return unshade(rgb, self.gain, self.offset)


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H*W, 2] (x, y) pixel coordinates, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).float()


def resampled_grid(size: tuple[int, int], fitted: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[H*W, 2] pixel coordinates of the fitted frames (pixel centres at integers) of the
    pixel centres of a `size` (width, height) frame showing the same view: the source's
    pixels for a fit made at a smaller --size. At the fitted size it is pixel_grid."""
    (w, h), (fw, fh) = size, fitted
    scale = torch.tensor([fw / w, fh / h], device=device)
    return (pixel_grid(h, w, device) + 0.5) * scale - 0.5


@torch.no_grad()
def evaluate_frame(model: LayeredAtlas, t: int, chunk: int = 1 << 16, size: tuple[int, int] | None = None,
                   colour: bool = True) -> FrameMaps:
    """Run the model on every pixel of frame t, in chunks to bound memory; with `size`
    (width, height), on the pixels of a frame of that size instead (atlas.evaluate.resampled_grid):
    the mapping is continuous, so maps at the source's resolution are evaluated, not upsampled.
    Without `colour` only the mapping and the weights are evaluated (an export needs no
    reconstruction) and rgb is None."""
    g = model.geom
    device = next(model.parameters()).device
    w, h = size or (g.width, g.height)
    xy = resampled_grid((w, h), (g.width, g.height), device)
    keys = ["rgb", "uv", "weights"] if colour else ["uv", "weights"]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys + ["gain"]}
    offset = None  # one per channel for the whole frame
    for start in range(0, xy.shape[0], chunk):
        p = xy[start : start + chunk]
        frames = torch.full((p.shape[0],), t, dtype=torch.long, device=device)
        out = model(p, frames, colour_rows=None if colour else 0)
        for k in keys:
            parts[k].append(out[k].cpu())
        if model.shading is not None:
            gain, offset = model.shading.gain_offset(p, frames)
            parts["gain"].append(gain.cpu())
    n_layers = len(model.layer_names)
    return FrameMaps(
        torch.cat(parts["rgb"]).reshape(h, w, 3) if colour else None,
        torch.cat(parts["uv"]).reshape(h, w, n_layers, 2),
        torch.cat(parts["weights"]).reshape(h, w, n_layers),
        torch.cat(parts["gain"]).reshape(h, w, 3) if parts["gain"] else None,
        None if offset is None else offset[0].cpu(),
    )


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = torch.mean((pred.clamp(0, 1) - target) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
