"""One fitting step: the batch loss (the terms of atlas.losses) and how a step runs, launched op by
op or replayed from a CUDA graph.

A step is a few hundred small kernels. Launched one by one from Python, a GPU step is
bound by launch overhead and by every host sync, not by the GPU. So the loss has static
shapes and copies nothing from the host (no step waits for the host), and with
`train.cuda_graph` the whole step (forward, backward, Adam) is captured once and
replayed: one launch per step. With `train.compile` torch.compile fuses the loss's small
ops (the hash encoding is a torch.library operator it traces through), on any device.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

from . import losses
from .config import FitConfig, LossConfig
from .errors import first_line
from .io import unit_float
from .model import LayeredAtlas
from .preprocess import Preprocessed

HIDDEN_RESIDUAL_WEIGHT = 0.05  # how much a foreground's residual regularisers count where it is hidden


def step_data(frames: torch.Tensor, pre: Preprocessed, device: torch.device) -> dict[str, torch.Tensor]:
    """What :func:`step_loss` reads, flattened per pixel and moved to `device` once, in the
    dtypes they are stored in (frames uint8, uint16 or float16, flow float16, masks uint8): a
    step converts only its batch, so the shot costs its compact bytes, on a GPU too (16-bit
    frames go there as float16, converted here: torch's CUDA support of uint16 is partial)."""
    long = pre.pairs[pre.pairs[:, 3] - pre.pairs[:, 0] > 1]  # stride 1 is the flow term's
    rgb = frames.reshape(-1, 3)
    if rgb.dtype == torch.uint16 and device.type != "cpu":
        out = torch.empty(rgb.shape, dtype=torch.float16, device=device)
        for dst, src in zip(out.split(1 << 22), rgb.split(1 << 22)):
            dst.copy_(unit_float(src).half())
        rgb = out
    return {
        "rgb": rgb.to(device),
        "flow": pre.flow_fwd.reshape(-1, 2).to(device),
        "valid": pre.valid_fwd.reshape(-1).to(device),
        "masks": pre.masks.reshape(-1).to(device),
        "pairs": long.to(device),
    }


def step_loss(model: LayeredAtlas, data: dict[str, torch.Tensor], idx: torch.Tensor, mask_w: torch.Tensor, lw: LossConfig,
              px_per_uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, reconstruction MSE) for a batch of pixel indices `idx` into the video.

    data: "rgb" [T*H*W, 3] (uint8, or float in [0, 1]), "flow" [(T-1)*H*W, 2] float16,
    "valid" [(T-1)*H*W] bool, "masks" [T*H*W] uint8 in {0, 1}, "pairs" [M, 6] long-range correspondences (t, x, y, t2, x2, y2); `mask_w` is
    the annealed mask-bootstrap weight (a 0-dim tensor). A quarter of the batch's indices,
    taken modulo M, pick the correspondences of the step (uniform, like the pixels).
    Shapes never depend on the data (no boolean indexing, no `.any()`). Each grid is
    evaluated once per step where possible: the batch and its flow targets go through
    the model together, the rigidity stencil through each residual grid together.
    """
    g = model.geom
    T, W, HW = g.num_frames, g.width, g.height * g.width
    B = idx.shape[0]
    half, q = B // 2, B // 4
    t, rem = idx // HW, idx % HW
    xy = torch.stack([rem % W, rem // W], dim=-1).float()
    # flow targets of the first half of the batch; pixels without a reliable forward flow
    # (last frame, occluded) get weight 0 instead of being dropped
    fidx = idx[:half].clamp_max(data["valid"].numel() - 1)
    has_flow = ((t[:half] < T - 1) & data["valid"][fidx]).float()
    xy2 = xy[:half] + data["flow"][fidx].float()
    t2 = (t[:half] + 1).clamp_max(T - 1)
    pairs = data.get("pairs")
    n_long = q if pairs is not None and pairs.shape[0] and lw.long_range > 0 else 0  # static for a fit
    pts, frames = [xy, xy2], [t, t2]
    if n_long:
        pr = pairs.index_select(0, idx[:n_long] % pairs.shape[0])
        pts += [pr[:, 1:3], pr[:, 4:6]]
        frames += [pr[:, 0].long(), pr[:, 3].long()]
    out = model(torch.cat(pts), torch.cat(frames), colour_rows=B)
    target = unit_float(data["rgb"][idx])
    mse = losses.reconstruction(out["rgb"], target)
    loss = lw.recon * mse
    if model.shading is not None:
        loss = loss + lw.shading * model.shading.prior()
    uv, alpha, weights = out["uv"], out["alpha"], out["weights"]
    flow_w = weights[:half].detach() * has_flow[:, None]
    boost = losses.flow_boost(out["rgb"][:half], target[:half], lw.flow_boost)
    loss = loss + lw.flow * losses.flow_consistency(uv[:half], uv[B : B + half], flow_w, px_per_uv, weights[B : B + half], boost)
    if n_long:
        a0, a1 = B + half, B + half + n_long
        both = torch.minimum(weights[a0:a1], weights[a1:]).detach()  # the layer shows at both ends
        loss = loss + lw.long_range * losses.correspondence(uv[a0:a1], uv[a1:], both, px_per_uv)
    if model.num_fg:
        loss = loss + mask_w * losses.mask_bootstrap(1.0 - weights[:B, 0], data["masks"][idx].float())
        loss = loss + lw.sparsity * losses.sparsity(alpha[:B])
        loss = loss + lw.alpha_flow * losses.alpha_flow(alpha[:half], alpha[B : B + half], has_flow)
    # rigidity and size of each residual on a quarter of the batch: the pixel and its +x, +y
    # neighbours. A foreground's pixels count by its weight there (floored, so the residual
    # stays defined): off the object its residual is free to bend, and the object's own
    # deformation is not held to the smoothness of the empty frame around it. The background
    # shows nearly everywhere over the shot; its pixels count alike. Where a foreground's
    # pixel has no reliable flow to the next frame, its residual there is also compared with
    # the residual where the layer's global motion carries the pixel (losses.residual_change;
    # the background's residual, held so at its occlusion edges, cost reconstruction).
    x, y = xy[:q].unbind(-1)
    stencil = torch.cat([xy[:q], torch.stack([x + 1.0, y], -1), torch.stack([x, y + 1.0], -1)])
    everywhere = torch.ones_like(x)
    t_next = (t[:q] + 1).clamp_max(T - 1)
    blind = (t[:q] < T - 1).float() - has_flow[:q]
    for i, m in enumerate(model.mappings):
        pts, frames = stencil, t[:q].repeat(3)
        if i:  # and where the layer's global motion carries the pixel, one frame on
            pts, frames = torch.cat([pts, m.carried(xy[:q], t[:q], t_next)]), torch.cat([frames, t_next])
        r0, rx, ry, *r1 = m.residual(pts, frames).split(q)
        seen = weights[:q, i].detach().clamp_min(HIDDEN_RESIDUAL_WEIGHT) if i else everywhere
        loss = loss + lw.rigidity * losses.rigidity(r0, rx, ry, px_per_uv[i : i + 1], seen)
        loss = loss + lw.residual_size * losses.residual_size(r0, px_per_uv[i : i + 1], seen)
        if i:
            loss = loss + lw.residual_change * losses.residual_change(r0, r1[0], px_per_uv[i : i + 1], weights[:q, i].detach() * blind)
    return loss, mse


class Stepper:
    """Owns the optimiser and runs steps: `stepper(idx)` -> the batch MSE (detached, on
    the device, not synced).

    Learning rates and the mask weight are device tensors updated in place by
    :meth:`schedule`, so a captured graph sees each step's values. With `cuda_graph` (on
    a CUDA device) the first `warmup` steps run eagerly on a side stream, as capture
    requires; the next is captured, and every later step replays it.
    """

    def __init__(self, model: LayeredAtlas, data: dict[str, torch.Tensor], cfg: FitConfig, device: torch.device,
                 cuda_graph: bool = False, warmup: int = 3, compile: bool = False) -> None:
        self.model, self.data, self.loss_cfg = model, data, cfg.loss
        self.device = device
        t = cfg.train
        self.base_lrs = [t.lr_grid, t.lr_mlp, t.lr_transform]
        groups: list[list[torch.nn.Parameter]] = [[], [], []]
        for name, p in model.named_parameters():
            groups[0 if name.endswith("table") or name.startswith("shading.") or name == "blur" else 2 if name.endswith("transforms") else 1].append(p)
        self.opt = torch.optim.Adam(
            [{"params": ps, "lr": torch.tensor(lr, device=device)} for ps, lr in zip(groups, self.base_lrs)],
            betas=(0.9, 0.99), eps=1e-15, fused=True, capturable=device.type == "cuda",
        )
        self.mask_w = torch.zeros((), device=device)
        self.px_per_uv = torch.stack([m.pixels_per_uv for m in model.mappings])  # [layers, 2]
        self.use_graph = cuda_graph and device.type == "cuda"
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None  # the graph's input buffer
        self.side: torch.cuda.Stream | None = None  # where the warm-up steps run
        self.eager_steps = 0
        # torch.compile'd loss; compiling happens in the first step, which falls back to eager on failure
        self.loss_fn = torch.compile(step_loss, dynamic=False) if compile else step_loss
        self.compile_pending = compile

    def load_optimizer(self, state: dict) -> None:
        """Restore a checkpoint's optimiser state (its learning rates come back as device tensors)."""
        self.opt.load_state_dict(state)
        for grp in self.opt.param_groups:
            grp["lr"] = torch.as_tensor(grp["lr"], dtype=torch.float32).to(self.device)

    def schedule(self, progress: float) -> None:
        """Set the schedules for `progress` in [0, 1]: learning rates decay 10x; the mask
        bootstrap's weight falls linearly to 0 over the first `mask_anneal` of the fit."""
        for grp, lr in zip(self.opt.param_groups, self.base_lrs):
            grp["lr"].fill_(lr * 0.1**progress)
        lw = self.loss_cfg
        self.mask_w.fill_(lw.mask * max(0.0, 1.0 - progress / max(lw.mask_anneal, 1e-6)))

    def _run(self, idx: torch.Tensor) -> torch.Tensor:
        if self.compile_pending:
            self.compile_pending = False
            try:
                return self._step(idx)
            except Exception as exc:  # no C++ compiler or Triton, an inductor bug: the fit still runs
                warnings.warn(f"train.compile: torch.compile failed ({first_line(exc)}); running steps eagerly", stacklevel=2)
                self.loss_fn = step_loss
                self.opt.zero_grad(set_to_none=True)
        return self._step(idx)

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        with self._deterministic():
            loss, mse = self.loss_fn(self.model, self.data, idx, self.mask_w, self.loss_cfg, self.px_per_uv)
            loss.backward()
            self.opt.step()
        return mse.detach()

    @contextlib.contextmanager
    def _deterministic(self) -> Iterator[None]:
        """CPU fits are deterministic for a seed. Compiled, the transforms' gradient would
        be an atomic scatter-add whose sum order varies between runs; in deterministic
        mode inductor emits an ordered one instead (the flag is part of the compiled step's
        guards, so it is set for every step, not only while compiling)."""
        if self.loss_fn is step_loss or self.device.type != "cpu" or torch.are_deterministic_algorithms_enabled():
            yield
            return
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(False)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.use_graph:
            self.opt.zero_grad(set_to_none=True)
            return self._run(idx)
        if self.static_idx is None or self.side is None:
            self.static_idx = torch.empty_like(idx)
            self.side = torch.cuda.Stream(device=self.device)
        self.static_idx.copy_(idx)
        if self.graph is None and self.eager_steps < self.warmup:
            main = torch.cuda.current_stream(self.device)
            self.side.wait_stream(main)
            with torch.cuda.stream(self.side):
                self.opt.zero_grad(set_to_none=True)
                mse = self._run(self.static_idx)
            main.wait_stream(self.side)
            self.eager_steps += 1
            return mse.clone()
        if self.graph is None:
            # gradients are allocated inside the graph's pool and overwritten by each replay
            self.opt.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_mse = self._run(self.static_idx)
        self.graph.replay()
        return self.graph_mse.clone()
