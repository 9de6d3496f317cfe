"""Fitting losses (DESIGN.md §Fit). Each takes batched tensors and returns a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1: robust to the flow's outliers, differentiable at 0."""
    return torch.sqrt(x * x + eps * eps)


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared RGB error (this is what PSNR measures)."""
    return F.mse_loss(pred, target)


def flow_consistency(uv_a: torch.Tensor, uv_b: torch.Tensor, weights: torch.Tensor, px_per_uv: torch.Tensor) -> torch.Tensor:
    """A pixel and its flow target must land on the same atlas point, per layer.

    uv_a, uv_b: [N, layers, 2]; weights: [N, layers] (layer visibility at the source
    pixel, detached); px_per_uv: [layers, 2] converts uv to atlas pixels.
    """
    err = charbonnier(((uv_a - uv_b) * px_per_uv[None]).norm(dim=-1))
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def rigidity(res: torch.Tensor, res_dx: torch.Tensor, res_dy: torch.Tensor, px_per_uv: torch.Tensor) -> torch.Tensor:
    """Squared finite-difference Jacobian (atlas px per frame px) of the mapping residual.

    The global transform carries the camera/object motion; the residual may only bend
    it smoothly, which keeps the atlas undistorted (the role of LNA's rigidity term).
    """
    jx = (res_dx - res) * px_per_uv[None]
    jy = (res_dy - res) * px_per_uv[None]
    return (jx.square().sum(-1) + jy.square().sum(-1)).mean()


def mask_bootstrap(alpha_union: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE between total foreground opacity and the bootstrap mask."""
    return F.binary_cross_entropy(alpha_union.clamp(1e-5, 1 - 1e-5), mask)


def alpha_flow(alpha_a: torch.Tensor, alpha_b: torch.Tensor) -> torch.Tensor:
    """Opacity is carried along the flow."""
    return (alpha_a - alpha_b).abs().mean()


def sparsity(alpha: torch.Tensor) -> torch.Tensor:
    """Mean foreground opacity: foreground layers only where needed."""
    return alpha.mean()
