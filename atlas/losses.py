"""Fitting losses (their sum is atlas.step.step_loss). Each takes batched tensors and returns a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FLOW_TOLERANCE_PX = 0.5  # atlas px of a foreground's disagreement with the flow that cost nothing at its edges (flow_consistency)
INTERIOR_WEIGHT = 0.95  # a foreground's weight at both ends of a flow vector that makes it interior (flow_consistency)
PLACED_COLOUR_ERROR = 0.03  # mean abs RGB error of a pixel the texture places; past it the flow counts more (flow_boost)


def charbonnier(sq_norm: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(|d|^2 + eps^2) from |d|^2: a smooth L1, robust to the flow's outliers, with a
    finite gradient at d = 0 (a norm's gradient there is NaN, which no zero weight cancels)."""
    return torch.sqrt(sq_norm + eps * eps)


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared RGB error (this is what PSNR measures)."""
    return F.mse_loss(pred, target)


def flow_boost(rgb: torch.Tensor, target: torch.Tensor, most: float) -> torch.Tensor:
    """[N] factor (1 to `most`) on a foreground pixel's flow term: its colour error
    (mean abs RGB, detached) over PLACED_COLOUR_ERROR. Where the reconstruction misses a
    pixel inside an object (motion blur, a limb deforming faster than the texture can
    follow), the texture cannot place the mapping there and its pull is noise; the flow,
    which followed the pixel, holds it harder. Where the texture explains the pixel the
    flow stays light, and at the object's edges (flow_consistency) it is never boosted:
    there the colour is missed because the pixel is mixed, and the flow is at its worst.
    """
    err = (rgb.detach() - target).abs().mean(dim=-1)
    return (err / PLACED_COLOUR_ERROR).clamp(1.0, most)


def flow_consistency(uv_a: torch.Tensor, uv_b: torch.Tensor, weights: torch.Tensor, px_per_uv: torch.Tensor,
                     weights_b: torch.Tensor, boost: torch.Tensor | None = None) -> torch.Tensor:
    """A pixel and its flow target must land on the same atlas point, per layer.

    The background's term is a mean over the frame. A foreground's is normalised by the
    geometric mean of its own visibility and the frame's, so an object on a share s of the
    frame is held 1/sqrt(s) times as hard as a frame-wide mean would hold it: its flow
    keeps a blurred, deforming figure from sliding where its texture cannot, without
    overriding the texture of a rigid, sharp one (a mean over the object alone, 1/s, did).
    At a foreground's edges (its weight below INTERIOR_WEIGHT at either end of the flow
    vector) the flow is no better than its noise and the texture places the object: there
    the first FLOW_TOLERANCE_PX of disagreement are free. Inside the object they are not:
    a free half pixel a frame lets anything else that pulls on the mapping (the residual's
    size, a blurred texture) move it steadily, and over a shot that adds up to drift. The
    background keeps the whole pull: on flat ground its flow alone holds it.

    uv_a, uv_b: [N, layers, 2]; weights: [N, layers] (layer visibility at the source
    pixel, detached; 0 where the flow is unreliable); px_per_uv: [layers, 2] converts uv
    to atlas pixels; weights_b: [N, layers] layer visibility at the flow's target; boost:
    [N] factor on the foregrounds' terms (:func:`flow_boost`), 1 if not given.
    """
    dist = charbonnier(((uv_a - uv_b) * px_per_uv[None]).square().sum(dim=-1))
    frame = weights.sum().clamp_min(1.0)
    background = (dist[:, 0] * weights[:, 0]).sum() / frame
    own = weights[:, 1:].sum(dim=0).clamp_min(1.0)
    edge = torch.minimum(weights[:, 1:], weights_b[:, 1:]) < INTERIOR_WEIGHT
    beyond = torch.relu(dist[:, 1:] - FLOW_TOLERANCE_PX * edge)
    if boost is not None:  # inside the object only: at its edges the flow is no better than its noise
        beyond = beyond * torch.where(edge, 1.0, boost[:, None])
    foregrounds = (beyond * weights[:, 1:]).sum(dim=0) / (own * frame).sqrt()
    return background + foregrounds.sum()


def correspondence(uv_a: torch.Tensor, uv_b: torch.Tensor, weights: torch.Tensor, px_per_uv: torch.Tensor,
                   scale_px: float = 2.0) -> torch.Tensor:
    """Long-range correspondences land on the same atlas point, per layer, under a
    Geman-McClure loss: a wrong match (occlusion, parallax the layer cannot hold) costs at
    most 1 instead of pulling with its full distance. Shapes as :func:`flow_consistency`."""
    sq = ((uv_a - uv_b) * px_per_uv[None]).square().sum(dim=-1)
    err = sq / (sq + scale_px * scale_px)
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def rigidity(res: torch.Tensor, res_dx: torch.Tensor, res_dy: torch.Tensor, px_per_uv: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """Squared finite-difference Jacobian (atlas px per frame px) of the mapping residual,
    each pixel counted by `weights` [N] (the layer's visibility there, see step_loss).

    The global transform carries the camera/object motion; the residual may only bend
    it smoothly, which keeps the atlas undistorted (the role of LNA's rigidity term).
    """
    jx = (res_dx - res) * px_per_uv[None]
    jy = (res_dy - res) * px_per_uv[None]
    return ((jx.square().sum(-1) + jy.square().sum(-1)) * weights).mean()


def residual_size(res: torch.Tensor, px_per_uv: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean size of the mapping residual in atlas px (Charbonnier: an L1 pull towards the
    global transform), each pixel counted by `weights` [N] as in :func:`rigidity`.

    Rigidity charges the residual's spatial derivatives only, so a residual that shifts a
    whole layer by a different amount in each frame is free there: the layer's texture can
    slide through the frames and still reconstruct them. This makes such a shift pay for
    itself in reconstruction.
    """
    return (charbonnier((res * px_per_uv).square().sum(dim=-1)) * weights).mean()


def residual_change(res: torch.Tensor, res_next: torch.Tensor, px_per_uv: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """How much the mapping residual changes (atlas px, Charbonnier) between a pixel and
    where the layer's global transforms carry it in the next frame, counted by `weights`
    [N] (step_loss: where the flow cannot say where the pixel went).

    Without a reliable flow for a few frames (a dark, flat part of an object over a busy
    background, motion blur) nothing ties the residual of one frame to the next, and a
    part can jump to a second copy of itself in the atlas, where edits do not follow it.
    There the deformation holds still in the layer's own frame instead.
    """
    return residual_size(res - res_next, px_per_uv, weights)


def mask_bootstrap(alpha_union: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE between total foreground opacity and the bootstrap mask. A NaN opacity (a
    diverging fit, which the trainer reports from the reconstruction loss) is read as 0.5
    here: F.binary_cross_entropy raises on it."""
    return F.binary_cross_entropy(torch.nan_to_num(alpha_union, nan=0.5).clamp(1e-5, 1 - 1e-5), mask)


def alpha_flow(alpha_a: torch.Tensor, alpha_b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Opacity is carried along the flow: mean |a - b| over the pixels whose flow is valid.

    alpha_a, alpha_b: [N, k]; valid: [N] in {0, 1}.
    """
    err = (alpha_a - alpha_b).abs() * valid[:, None]
    return err.sum() / (valid.sum() * alpha_a.shape[1]).clamp_min(1.0)


def sparsity(alpha: torch.Tensor) -> torch.Tensor:
    """Mean foreground opacity: foreground layers only where needed."""
    return alpha.mean()
