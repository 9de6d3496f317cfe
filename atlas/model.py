"""The layered atlas model: per layer a mapping (x, y, t) -> (u, v), opacities, colours.

Coordinates:
  * frame pixels (x, y) are normalised to q = ((x, y) + 0.5 - centre) / scale, with
    scale = max(W, H), so transforms are well conditioned;
  * each layer's per-frame 3x3 transform maps q into that layer's canonical plane
    (the reference frame's q for the background; an affinely tracked plane for a foreground);
  * uv = (canonical - lo) / (hi - lo) puts the area the video covers into [0, 1]^2.
A zero-initialised hash-grid residual (in uv units) corrects the global transform.
Foreground layers are composited front to back over the background:
  w_1 = a_1, w_2 = (1 - a_1) a_2, ..., w_bg = prod(1 - a_i).
The composite is seen through the frame's shading (atlas.shading: exposure, vignetting).
A pixel reads a colour grid at its footprint in the atlas (from the global transform; times
a learned per-frame blur), so frames that see a layer from far away or blurred read only
its coarser levels (encoding.HashGrid.level_weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .encoding import HashGrid
from .shading import FrameShading

# coarsest grid resolutions (x, y[, t]); the finest follow the frame or atlas size (ModelConfig)
RESIDUAL_BASE = (4, 4, 2)
ALPHA_BASE = (8, 8, 2)
COLOUR_BASE = 16


def mlp(in_dim: int, hidden: int, out_dim: int, n_hidden: int, zero_last: bool = False) -> nn.Sequential:
    """ReLU MLP; `zero_last` makes it output exactly 0 at initialisation."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
        dim = hidden
    last = nn.Linear(dim, out_dim)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def inverse3x3(m: torch.Tensor) -> torch.Tensor:
    """Inverses of 3x3 matrices [..., 3, 3] from their adjugates: elementwise arithmetic
    only, where torch.linalg's inverse reads its error flag back to the host (a GPU step
    would wait for it)."""
    r0, r1, r2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    adj = torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], dim=-1)
    det = (r0 * adj[..., :, 0]).sum(-1)
    return adj / det[..., None, None]


def project(h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Points q [N, 2] through 3x3 transforms h [N, 3, 3] (homogeneous divide, w kept positive)."""
    ph = torch.einsum("nij,nj->ni", h, torch.cat([q, torch.ones_like(q[:, :1])], dim=-1))
    return ph[:, :2] / ph[:, 2:].clamp_min(1e-6)


@dataclass(frozen=True)
class FrameGeometry:
    """Size of the fitted video, shared by every part of the model."""

    num_frames: int
    height: int
    width: int

    @property
    def scale(self) -> float:
        return float(max(self.width, self.height))

    def normalise(self, xy: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates [N, 2] (x right, y down; pixel centres at +0.5) -> q.

        Python scalars only: a constant tensor made here would be a host-to-device copy,
        which makes a GPU step wait for the host.
        """
        return torch.stack([xy[:, 0] + (0.5 - self.width / 2.0), xy[:, 1] + (0.5 - self.height / 2.0)], dim=-1) / self.scale

    def pixels(self, q: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalise`: q [N, 2] -> pixel coordinates."""
        return torch.stack([q[:, 0] * self.scale + (self.width / 2.0 - 0.5), q[:, 1] * self.scale + (self.height / 2.0 - 0.5)], dim=-1)

    def grid_input(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[N, 3] in [0, 1]^3 for the 3-D grids: (x / W, y / H, t / (T - 1))."""
        tn = t.to(xy.dtype) / max(self.num_frames - 1, 1)
        return torch.stack([(xy[:, 0] + 0.5) / self.width, (xy[:, 1] + 0.5) / self.height, tn], dim=-1)


def frame_grid_finest(geom: FrameGeometry, frac: float) -> tuple[float, float, int]:
    """Finest resolution of a 3-D (x, y, t) grid: `frac` of the frame size, a cell per frame."""
    return geom.width * frac, geom.height * frac, max(geom.num_frames - 1, 1)


class LayerMapping(nn.Module):
    """(x, y, t) -> (u, v) for one layer: learnable per-frame 3x3 transform + residual."""

    def __init__(self, geom: FrameGeometry, cfg: ModelConfig, transforms: torch.Tensor, uv_lo: torch.Tensor, uv_hi: torch.Tensor, backend: str) -> None:
        super().__init__()
        self.geom = geom
        self.transforms = nn.Parameter(transforms.clone().float())  # [T, 3, 3]
        self.register_buffer("uv_lo", uv_lo.clone().float())  # [2]
        self.register_buffer("uv_hi", uv_hi.clone().float())  # [2]
        finest = frame_grid_finest(geom, cfg.residual_finest_frac)
        self.grid = HashGrid(3, cfg.residual_levels, 2, cfg.log2_table_size, base=RESIDUAL_BASE, finest=finest, backend=backend)
        self.net = mlp(self.grid.out_dim, cfg.hidden, 2, 1, zero_last=True)

    def global_uv(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._global_uv(self._frame_transforms(t), self.geom.normalise(xy))

    def _frame_transforms(self, t: torch.Tensor) -> torch.Tensor:
        return self.transforms.index_select(0, t)  # [N, 3, 3]; index_select: deterministic backward on CPU

    def _global_uv(self, h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (project(h, q) - self.uv_lo) / (self.uv_hi - self.uv_lo)

    def carried(self, xy: torch.Tensor, t: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """Where the layer's global transforms alone take pixels xy [N, 2] of frames t [N] in
        frames t2 [N] (no gradient: a place to look, not a quantity to fit)."""
        with torch.no_grad():
            h = inverse3x3(self.transforms).index_select(0, t2) @ self.transforms.index_select(0, t)
            return self.geom.pixels(project(h, self.geom.normalise(xy)))

    def footprint(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[N] side of the atlas area (uv units) a pixel of frame t covers, from the global
        transform (a homography's Jacobian determinant is det(h) / w^3); no gradient: how
        finely to sample, not a quantity to fit."""
        return self._footprint(self._frame_transforms(t), self.geom.normalise(xy))

    @torch.no_grad()
    def _footprint(self, h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        w = h[:, 2, 0] * q[:, 0] + h[:, 2, 1] * q[:, 1] + h[:, 2, 2]
        det = (h[:, 0] * torch.linalg.cross(h[:, 1], h[:, 2])).sum(-1)
        area = det.abs() / w.abs().clamp_min(1e-6) ** 3 / (self.geom.scale**2 * (self.uv_hi - self.uv_lo).prod())
        return area.sqrt()

    def residual(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(self.grid(self.geom.grid_input(xy, t)))

    def forward(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.global_uv(xy, t) + self.residual(xy, t)

    def uv_and_footprint(self, xy: torch.Tensor, t: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(xy, t) and footprint(xy[:rows], t[:rows]) from one lookup of the transforms."""
        h, q = self._frame_transforms(t), self.geom.normalise(xy)
        return self._global_uv(h, q) + self.residual(xy, t), self._footprint(h[:rows], q[:rows])

    @property
    def pixels_per_uv(self) -> torch.Tensor:
        """Atlas extent in source pixels: (hi - lo) * scale, per axis."""
        return (self.uv_hi - self.uv_lo) * self.geom.scale


class LayeredAtlas(nn.Module):
    """Background + k foreground layers. k = 0 is a single deformation field (CoDeF-like)."""

    def __init__(self, geom: FrameGeometry, cfg: ModelConfig, layer_names: list[str], transforms: torch.Tensor, uv_lo: torch.Tensor, uv_hi: torch.Tensor, backend: str = "auto") -> None:
        super().__init__()
        self.geom, self.cfg, self.layer_names = geom, cfg, list(layer_names)
        self.mappings = nn.ModuleList(
            LayerMapping(geom, cfg, transforms[i], uv_lo[i], uv_hi[i], backend) for i in range(len(layer_names))
        )
        self.colour_grids = nn.ModuleList()
        self.colour_nets = nn.ModuleList()
        for m in self.mappings:
            px = (m.pixels_per_uv * cfg.colour_density).tolist()
            grid = HashGrid(2, cfg.colour_levels, 2, cfg.log2_table_size, base=COLOUR_BASE, finest=px, backend=backend)
            self.colour_grids.append(grid)
            self.colour_nets.append(mlp(grid.out_dim, cfg.hidden, 3, cfg.colour_hidden_layers))
        self.num_fg = len(layer_names) - 1
        if self.num_fg:
            finest = frame_grid_finest(geom, cfg.alpha_finest_frac)
            self.alpha_grid = HashGrid(3, cfg.alpha_levels, 2, cfg.log2_table_size, base=ALPHA_BASE, finest=finest, backend=backend)
            self.alpha_net = mlp(self.alpha_grid.out_dim, cfg.hidden, self.num_fg, 1)
        self.shading = FrameShading(geom.num_frames, geom.normalise) if cfg.shading == "smooth" else None
        # log2 of how much coarser than its footprint each frame reads its layers [T, 1] (or
        # [T, layers] with blur_per_layer): > 0 where a frame is blurred (the camera or the
        # object moved, or it is out of focus)
        blur_columns = len(layer_names) if cfg.blur_per_layer else 1
        self.blur = nn.Parameter(torch.zeros(geom.num_frames, blur_columns)) if cfg.colour_lod and cfg.frame_blur else None

    def uv(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[N, layers, 2] atlas coordinates."""
        return torch.stack([m(xy, t) for m in self.mappings], dim=1)

    def alpha(self, xy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[N, k] foreground opacities (k = number of foreground layers)."""
        if not self.num_fg:
            return xy.new_zeros(xy.shape[0], 0)
        return torch.sigmoid(self.alpha_net(self.alpha_grid(self.geom.grid_input(xy, t))))

    def layer_colour(self, layer: int, uv: torch.Tensor, footprint: torch.Tensor | None = None) -> torch.Tensor:
        """uv [N, 2] -> [N, 3] colours of one layer's atlas; with `footprint` [N] (uv units),
        as pixels that cover that much of the atlas see it (HashGrid.level_weights), else at
        the atlas's full detail."""
        return torch.sigmoid(self.colour_nets[layer](self.colour_grids[layer](uv.clamp(0.0, 1.0), footprint)))

    def colour(self, uv: torch.Tensor, footprint: torch.Tensor | None = None) -> torch.Tensor:
        """uv [N, layers, 2] (footprints [N, layers]) -> [N, layers, 3] atlas colours."""
        return torch.stack([self.layer_colour(i, uv[:, i], None if footprint is None else footprint[:, i])
                            for i in range(len(self.layer_names))], dim=1)

    @staticmethod
    def layer_weights(alpha: torch.Tensor) -> torch.Tensor:
        """[N, k] foreground opacities (front first) -> [N, k + 1] weights in layer order
        (background first, then foreground_1..k)."""
        fg, remaining = [], torch.ones_like(alpha[:, 0]) if alpha.shape[1] else alpha.new_ones(alpha.shape[0])
        for i in range(alpha.shape[1]):
            fg.append(remaining * alpha[:, i])
            remaining = remaining * (1.0 - alpha[:, i])
        return torch.stack([remaining] + fg, dim=1)

    def forward(self, xy: torch.Tensor, t: torch.Tensor, colour_rows: int | None = None) -> dict[str, torch.Tensor]:
        """Evaluate pixels xy [N, 2] (pixel units) of frames t [N] (int64).

        `colour_rows` colours only the first rows ("rgb_layers" and "rgb" have that many);
        the fitter needs just the mapping and opacity at its flow targets.
        """
        n = xy.shape[0] if colour_rows is None else colour_rows
        footprint = None
        if self.cfg.colour_lod:
            uv, footprint = (torch.stack(v, dim=1) for v in zip(*(m.uv_and_footprint(xy, t, n) for m in self.mappings)))
            if self.blur is not None:
                footprint = footprint * torch.exp2(self.blur.index_select(0, t[:n]))
        else:
            uv = self.uv(xy, t)
        alpha = self.alpha(xy, t)
        weights = self.layer_weights(alpha)
        rgb_layers = self.colour(uv[:n], footprint)
        rgb = (rgb_layers * weights[:n, :, None]).sum(dim=1)
        if self.shading is not None:
            rgb = self.shading(rgb, xy[:n], t[:n])
        return {"uv": uv, "alpha": alpha, "weights": weights, "rgb_layers": rgb_layers, "rgb": rgb}
