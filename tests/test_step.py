"""The fitting step: its batched, sync-free loss against the plain formulation, and (on a
GPU) that it never waits for the host and replays from a CUDA graph."""
from __future__ import annotations

import pytest
import torch

from atlas import losses
from atlas.config import FitConfig
from atlas.model import FrameGeometry, LayeredAtlas, LayerMapping
from atlas.step import HIDDEN_RESIDUAL_WEIGHT, Stepper, step_loss

GEOM = FrameGeometry(num_frames=5, height=24, width=32)


def _setup(device: str = "cpu", seed: int = 0) -> tuple[LayeredAtlas, dict[str, torch.Tensor], FitConfig]:
    gen = torch.Generator().manual_seed(seed)
    cfg = FitConfig()
    cfg.model.log2_table_size = 12
    cfg.model.num_foregrounds = 2
    layers, T = 3, GEOM.num_frames
    transforms = torch.eye(3).expand(layers, T, 3, 3).clone()
    transforms[:, :, :2, 2] = torch.randn(layers, T, 2, generator=gen) * 0.02  # a little motion per frame
    model = LayeredAtlas(GEOM, cfg.model, ["background", "fg1", "fg2"], transforms, torch.full((layers, 2), -0.6),
                         torch.full((layers, 2), 0.6), backend="auto")
    with torch.no_grad():  # non-trivial residuals and opacities
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    HW = GEOM.height * GEOM.width
    data = {
        "rgb": torch.rand(T * HW, 3, generator=gen),
        "flow": torch.randn((T - 1) * HW, 2, generator=gen) * 2.0,
        "valid": torch.rand((T - 1) * HW, generator=gen) > 0.3,
        "masks": (torch.rand(T * HW, generator=gen) > 0.5).float(),
    }
    return model.to(device), {k: v.to(device) for k, v in data.items()}, cfg


def _plain_loss(model: LayeredAtlas, data: dict[str, torch.Tensor], idx: torch.Tensor, mask_w: float, cfg: FitConfig) -> torch.Tensor:
    """The loss written the direct way: boolean selection of the pixels with a valid flow
    and one model call per term (the oracle for the batched step)."""
    lw, g = cfg.loss, GEOM
    HW, T = g.height * g.width, g.num_frames
    t, rem = idx // HW, idx % HW
    xy = torch.stack([rem % g.width, rem // g.width], -1).float()
    px = torch.stack([m.pixels_per_uv for m in model.mappings])
    out = model(xy, t)
    loss = lw.recon * losses.reconstruction(out["rgb"], data["rgb"][idx])
    loss = loss + mask_w * losses.mask_bootstrap(1.0 - out["weights"][:, 0], data["masks"][idx])
    loss = loss + lw.sparsity * losses.sparsity(out["alpha"])
    half, q = len(idx) // 2, len(idx) // 4
    sel = (t[:half] < T - 1) & data["valid"][idx[:half].clamp_max((T - 1) * HW - 1)]
    xy2 = xy[:half][sel] + data["flow"][idx[:half][sel]]
    t2 = t[:half][sel] + 1
    target = model(xy2, t2)
    d = ((out["uv"][:half][sel] - target["uv"]) * px[None]).norm(dim=-1)
    w, w2 = out["weights"][:half][sel].detach(), target["weights"]
    dist = torch.sqrt(d * d + 1e-6)
    loss = loss + lw.flow * (dist[:, 0] * w[:, 0]).sum() / w.sum()  # the background: a mean over the frame
    # a foreground: past the tolerance at its edges, by the geometric mean, inside it harder where the colour is missed
    missed = (out["rgb"][:half][sel].detach() - data["rgb"][idx[:half]][sel]).abs().mean(-1) / losses.PLACED_COLOUR_ERROR
    boost = missed.clamp(1.0, lw.flow_boost)
    for i in range(1, len(model.mappings)):
        tol = torch.where((w[:, i] >= losses.INTERIOR_WEIGHT) & (w2[:, i] >= losses.INTERIOR_WEIGHT), 0.0, losses.FLOW_TOLERANCE_PX)
        edge = tol > 0
        loss = loss + lw.flow * ((dist[:, i] - tol).clamp_min(0) * w[:, i] * torch.where(edge, 1.0, boost)).sum() / (w.sum() * w[:, i].sum()).sqrt()
    loss = loss + lw.alpha_flow * (out["alpha"][:half][sel] - model.alpha(xy2, t2)).abs().mean()
    # pixels without a valid flow to a next frame, and where each layer's global motion takes them there
    blind = (t[:q] < T - 1) & ~data["valid"][idx[:q].clamp_max((T - 1) * HW - 1)]
    q_blind = torch.cat([GEOM.normalise(xy[:q][blind]), torch.ones(int(blind.sum()), 1)], -1)
    for i, m in enumerate(model.mappings):
        r0 = m.residual(xy[:q], t[:q])
        rx = m.residual(xy[:q] + torch.tensor([1.0, 0.0]), t[:q])
        ry = m.residual(xy[:q] + torch.tensor([0.0, 1.0]), t[:q])
        seen = out["weights"][:q, i].detach().clamp_min(0.05) if i else torch.ones(q)
        jac = (torch.cat([rx - r0, ry - r0], -1) * px[i].repeat(2)).square().sum(-1)
        loss = loss + lw.rigidity * (jac * seen).mean()
        loss = loss + lw.residual_size * (torch.sqrt((r0 * px[i]).square().sum(-1) + 1e-6) * seen).mean()
        if not i:
            continue  # the background's residual is not held so
        h = m.transforms.detach()
        ph = torch.einsum("nij,nj->ni", torch.linalg.inv(h[t[:q][blind] + 1]) @ h[t[:q][blind]], q_blind)
        carried = (ph[:, :2] / ph[:, 2:]) * GEOM.scale + torch.tensor([GEOM.width / 2 - 0.5, GEOM.height / 2 - 0.5])
        change = torch.sqrt(((r0[blind] - m.residual(carried, t[:q][blind] + 1)) * px[i]).square().sum(-1) + 1e-6)
        loss = loss + lw.residual_change * (change * out["weights"][:q][blind, i].detach()).sum() / q
    return loss


def test_batched_step_loss_equals_the_plain_formulation():
    model, data, cfg = _setup()
    HW = GEOM.height * GEOM.width
    idx = torch.randint(0, GEOM.num_frames * HW, (512,), generator=torch.Generator().manual_seed(1))
    idx[:20] = torch.arange(20) + (GEOM.num_frames - 1) * HW  # last frame: no forward flow
    px = torch.stack([m.pixels_per_uv for m in model.mappings])
    loss, mse = step_loss(model, data, idx, torch.tensor(0.3), cfg.loss, px)
    expected = _plain_loss(model, data, idx, 0.3, cfg)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-7), (loss.item(), expected.item())
    assert mse.item() > 0
    # the gradients agree too (the zero-weighted rows contribute nothing, not NaN), on the
    # opacities and on a residual (with its change where the flow is blind)
    tables = [model.alpha_grid.table, model.mappings[1].grid.table]
    g_step = torch.autograd.grad(loss, tables)
    g_plain = torch.autograd.grad(_plain_loss(model, data, idx, 0.3, cfg), tables)
    for a, b in zip(g_step, g_plain):
        assert torch.isfinite(a).all() and a.abs().sum() > 0
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)


def test_long_range_term_matches_its_plain_formulation():
    model, data, cfg = _setup()
    cfg.loss.long_range = 0.05
    HW = GEOM.height * GEOM.width
    gen = torch.Generator().manual_seed(2)
    m = 300
    t = torch.randint(0, GEOM.num_frames - 2, (m,), generator=gen).float()
    xy = torch.rand(m, 2, generator=gen) * torch.tensor([GEOM.width - 1.0, GEOM.height - 1.0])
    data["pairs"] = torch.cat([t[:, None], xy.round(), (t + 2)[:, None], xy + torch.randn(m, 2, generator=gen)], 1)
    idx = torch.randint(0, GEOM.num_frames * HW, (512,), generator=gen)
    px = torch.stack([mp.pixels_per_uv for mp in model.mappings])
    loss, _ = step_loss(model, data, idx, torch.tensor(0.3), cfg.loss, px)
    pr = data["pairs"][idx[: len(idx) // 4] % m]  # a quarter of the batch picks its correspondences
    a, b = model(pr[:, 1:3], pr[:, 0].long()), model(pr[:, 4:6], pr[:, 3].long())
    both = torch.minimum(a["weights"], b["weights"]).detach()
    term = losses.correspondence(a["uv"], b["uv"], both, px)
    expected = _plain_loss(model, data, idx, 0.3, cfg) + cfg.loss.long_range * term
    assert term.item() > 0.1 and torch.allclose(loss, expected, rtol=1e-5, atol=1e-7), (loss.item(), expected.item())


def test_a_wrong_correspondence_pulls_less_than_a_near_one():
    """Geman-McClure: a match 40 atlas px off (an occlusion, parallax) has a smaller
    gradient than one 2 px off, and costs at most 1; a layer hidden at either end is not pulled."""
    px = torch.tensor([[100.0, 100.0]])
    uv_b = torch.zeros(2, 1, 2)
    uv_a = torch.tensor([[[0.02, 0.0]], [[0.4, 0.0]]], requires_grad=True)  # 2 px and 40 px off
    loss = losses.correspondence(uv_a, uv_b, torch.ones(2, 1), px)
    loss.backward()
    near, far = uv_a.grad[:, 0, 0].abs().tolist()
    assert far < 0.1 * near and loss.item() < 1.0
    uv_a.grad = None
    losses.correspondence(uv_a, uv_b, torch.tensor([[1.0], [0.0]]), px).backward()
    assert uv_a.grad[1].abs().sum() == 0


def test_a_residual_that_shifts_a_whole_layer_costs_its_size():
    """Rigidity sees no cost in a residual that moves every pixel of a layer alike (the
    texture sliding through the frames); the size term charges it its length in atlas px."""
    px = torch.tensor([[200.0, 100.0]])
    shift = torch.tensor([0.03, -0.04]).expand(64, 2)  # 6 px right, 4 px up, everywhere
    ones = torch.ones(64)
    assert losses.rigidity(shift, shift, shift, px, ones).item() == 0.0
    assert abs(losses.residual_size(shift, px, ones).item() - (6.0**2 + 4.0**2) ** 0.5) < 1e-3
    assert losses.residual_size(torch.zeros(64, 2), px, ones).item() < 1e-2


def test_a_foreground_residual_bends_almost_freely_off_its_object():
    """A foreground's residual regularisers count each pixel by the layer's compositing
    weight, floored: where the layer is not seen, its residual is pulled by the floor's
    share of what pulls it where it shows. The background's count everywhere alike."""
    model, data, cfg = _setup()
    # the regularisers alone (the residual's change where the flow is blind counts by the
    # weight itself, unfloored: tested with the step's oracle)
    cfg.loss.recon = cfg.loss.flow = cfg.loss.sparsity = cfg.loss.alpha_flow = cfg.loss.residual_change = 0.0
    px = torch.stack([m.pixels_per_uv for m in model.mappings])
    HW = GEOM.height * GEOM.width
    idx = torch.randint(0, GEOM.num_frames * HW, (512,), generator=torch.Generator().manual_seed(3))
    tables = [model.mappings[i].grid.table for i in (0, 1)]  # background, front foreground

    def pulls(fg_opacity: float) -> list[float]:
        with torch.no_grad():
            model.alpha_net[-1].weight.zero_()
            model.alpha_net[-1].bias.fill_(torch.logit(torch.tensor(fg_opacity)).item())
        grads = torch.autograd.grad(step_loss(model, data, idx, torch.tensor(0.0), cfg.loss, px)[0], tables)
        return [g.norm().item() for g in grads]

    (bg_hidden, fg_seen), (bg_shown, fg_unseen) = pulls(0.999), pulls(0.001)
    assert abs(fg_unseen / fg_seen - HIDDEN_RESIDUAL_WEIGHT) < 0.01, (fg_unseen, fg_seen)
    assert bg_hidden == pytest.approx(bg_shown, rel=1e-5)


def test_carried_pixels_land_where_the_global_motion_takes_them():
    model, _, _ = _setup()
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(50, 2, generator=gen) * torch.tensor([GEOM.width, GEOM.height])
    t = torch.randint(0, GEOM.num_frames - 1, (50,), generator=gen)
    for m in model.mappings:
        moved = m.carried(xy, t, t + 1)
        assert (moved - xy).abs().max() > 0.1  # the layers move a little per frame
        assert torch.allclose(m.global_uv(moved, t + 1), m.global_uv(xy, t), atol=1e-5)


def test_footprint_is_the_global_transforms_pixel_area_in_the_atlas():
    model, _, _ = _setup()
    m = model.mappings[1]
    with torch.no_grad():  # a homography that zooms and tilts, so the footprint varies across the frame
        m.transforms[2] = torch.tensor([[1.8, 0.2, 0.05], [-0.1, 1.5, 0.0], [0.4, -0.3, 1.0]])
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([GEOM.width, GEOM.height])
    t = torch.full((40,), 2)
    step = 1e-2
    du = (m.global_uv(xy + torch.tensor([step, 0.0]), t) - m.global_uv(xy, t)) / step
    dv = (m.global_uv(xy + torch.tensor([0.0, step]), t) - m.global_uv(xy, t)) / step
    area = (du[:, 0] * dv[:, 1] - du[:, 1] * dv[:, 0]).abs()
    foot = m.footprint(xy, t)
    assert torch.allclose(foot, area.sqrt(), rtol=1e-2)
    assert foot.max() > 1.2 * foot.min()
    uv, first = m.uv_and_footprint(xy, t, 25)  # the model's path: both from one lookup of the transforms
    assert torch.equal(uv, m(xy, t)) and torch.equal(first, foot[:25])


@pytest.mark.parametrize("flow_valid", [False, True])
def test_where_the_flow_is_blind_the_residual_holds_still_along_the_layers_motion(flow_valid):
    """Steps on the residual's change alone: where no frame has a reliable flow, a
    foreground's residual at a pixel comes to match its residual where the layer's global
    motion carries the pixel in the next frame; where the flow is reliable the term leaves
    it alone, and the background's residual either way."""
    model, data, cfg = _setup()
    data["valid"][:] = flow_valid
    cfg.loss.recon = cfg.loss.flow = cfg.loss.sparsity = cfg.loss.alpha_flow = cfg.loss.mask = 0.0
    cfg.loss.rigidity = cfg.loss.residual_size = 0.0
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(400, 2, generator=gen) * torch.tensor([GEOM.width - 1.0, GEOM.height - 1.0])
    t = torch.randint(0, GEOM.num_frames - 1, (400,), generator=gen)

    def change(m: LayerMapping) -> float:
        with torch.no_grad():
            return ((m.residual(xy, t) - m.residual(m.carried(xy, t, t + 1), t + 1)) * m.pixels_per_uv).norm(dim=-1).mean().item()

    (bg_before, before) = [change(m) for m in model.mappings[:2]]
    stepper = Stepper(model, data, cfg, torch.device("cpu"))
    n = GEOM.num_frames * GEOM.height * GEOM.width
    for step in range(60):
        stepper(torch.randint(0, n, (2048,), generator=torch.Generator().manual_seed(step)))
    bg_after, after = [change(m) for m in model.mappings[:2]]
    assert bg_after == bg_before
    assert before > 0.05
    assert (after < 0.3 * before) if not flow_valid else after == pytest.approx(before, rel=1e-6), (before, after)


def test_flow_consistency_holds_a_small_object_and_forgives_its_flows_noise_at_its_edges():
    """A foreground on 4% of the pixels is held 1/sqrt(0.04) = 5 times as hard as a mean
    over the frame would hold it. Where its flow ends at its edge (weight there below
    INTERIOR_WEIGHT), FLOW_TOLERANCE_PX of disagreement are free; inside it, none is.
    The background is the frame's mean, at any distance."""
    px = torch.full((2, 2), 100.0)
    weights = torch.zeros(100, 2)
    weights[:4, 1] = 1.0  # the object
    weights[4:, 0] = 1.0
    at_target = weights.clone()
    at_target[2:4, 1] = 0.5  # two of the object's flows end at its edge
    uv_a = torch.zeros(100, 2, 2, requires_grad=True)

    def loss(shift_px: float) -> torch.Tensor:
        return losses.flow_consistency(uv_a, torch.full((100, 2, 2), shift_px / 100.0 / 2**0.5), weights, px, at_target)

    small = 0.9 * losses.FLOW_TOLERANCE_PX
    within = loss(small)
    # the background's 96 pixels by the frame's 100; the object's 2 inner ones by sqrt(4 * 100) = 20
    assert within.item() == pytest.approx(small * 96 / 100 + small * 2 / 20, rel=1e-4)
    pull = torch.autograd.grad(within, uv_a)[0]
    assert pull[:2, 1].abs().min() > 0 and not pull[2:4, 1].any() and pull[4:, 0].abs().min() > 0
    far = losses.FLOW_TOLERANCE_PX + 1.5  # the edge ones pay what lies past the tolerance
    assert loss(far).item() == pytest.approx(far * 96 / 100 + (far * 2 + 1.5 * 2) / 20, rel=1e-4)


def test_a_foregrounds_flow_counts_more_where_its_colour_is_missed():
    """Pixels reconstructed within PLACED_COLOUR_ERROR keep the plain flow term; one missed
    by twice that counts twice, one missed by far counts `most` times; the background's
    term and an object's edge never change."""
    target = torch.full((4, 3), 0.5)
    rgb = target + torch.tensor([0.0, 0.5, 2.0, 30.0])[:, None] * losses.PLACED_COLOUR_ERROR
    boost = losses.flow_boost(rgb, target, most=4.0)
    assert boost.tolist() == pytest.approx([1.0, 1.0, 2.0, 4.0])
    assert losses.flow_boost(rgb, target, most=1.0).tolist() == [1.0] * 4
    px = torch.full((2, 2), 100.0)
    weights = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # three inside the object, one background
    uv_a, uv_b = torch.zeros(4, 2, 2), torch.full((4, 2, 2), 0.02)  # 2 atlas px apart on each axis: past any tolerance
    d = 8.0**0.5
    plain = losses.flow_consistency(uv_a, uv_b, weights, px, weights)
    assert plain.item() == pytest.approx(d / 4 + 3 * d / 12**0.5, rel=1e-5)  # background by the frame, object by sqrt(3 * 4)
    boosted = losses.flow_consistency(uv_a, uv_b, weights, px, weights, torch.tensor([1.0, 2.0, 4.0, 4.0]))
    assert boosted.item() == pytest.approx(d / 4 + (1 + 2 + 4) * d / 12**0.5, rel=1e-5)
    at_edge = weights.clone()
    at_edge[2, 1] = 0.5  # the third object pixel's flow ends at the object's edge: tolerated, never boosted
    edged = losses.flow_consistency(uv_a, uv_b, weights, px, at_edge, torch.tensor([1.0, 2.0, 4.0, 4.0]))
    tol = losses.FLOW_TOLERANCE_PX
    assert edged.item() == pytest.approx(d / 4 + (1 * d + 2 * d + (d - tol)) / 12**0.5, rel=1e-5)


# ops that make a GPU wait for the host: reading a value back, data-dependent shapes, and
# tensors made from Python data (a host-to-device copy)
HOST_SYNCS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::lift_fresh"}


def _ops(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_step_loss_and_backward_have_no_host_syncs():
    """The CPU stand-in for the GPU check below: no op in the step's loss or backward would
    sync a GPU (the plain formulation, with boolean selection, is caught)."""
    model, data, cfg = _setup()
    idx = torch.randint(0, GEOM.num_frames * GEOM.height * GEOM.width, (512,), generator=torch.Generator().manual_seed(3))
    px, mask_w = torch.stack([m.pixels_per_uv for m in model.mappings]), torch.tensor(0.3)
    assert not _ops(lambda: step_loss(model, data, idx, mask_w, cfg.loss, px)[0].backward()) & HOST_SYNCS
    assert "aten::nonzero" in _ops(lambda: _plain_loss(model, data, idx, 0.3, cfg).backward())


def test_stepper_schedule_and_a_step_lowers_the_loss():
    model, data, cfg = _setup()
    data["rgb"][:] = torch.tensor([0.9, 0.2, 0.5])  # a target the model can learn in a few steps
    stepper = Stepper(model, data, cfg, torch.device("cpu"))
    stepper.schedule(0.5)
    assert [round(float(g["lr"]), 8) for g in stepper.opt.param_groups] == [round(lr * 0.1**0.5, 8) for lr in stepper.base_lrs]
    assert float(stepper.mask_w) == 0.0  # annealed to 0 by half of the fit (mask_anneal 0.5)
    stepper.schedule(0.25)
    assert float(stepper.mask_w) == pytest.approx(cfg.loss.mask * 0.5)
    idx = torch.randint(0, GEOM.num_frames * GEOM.height * GEOM.width, (1024,), generator=torch.Generator().manual_seed(2))
    first = stepper(idx).item()
    for _ in range(20):
        last = stepper(idx).item()
    assert last < 0.75 * first, (first, last)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_gpu_step_never_waits_for_the_host():
    model, data, cfg = _setup("cuda")
    stepper = Stepper(model, data, cfg, torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = GEOM.num_frames * GEOM.height * GEOM.width
    stepper(torch.randint(0, n, (1024,), generator=gen, device="cuda"))  # first step: lazy initialisation
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            stepper.schedule(step / 10)
            stepper(torch.randint(0, n, (1024,), generator=gen, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_cuda_graph_replay_matches_eager_steps():
    n = GEOM.num_frames * GEOM.height * GEOM.width
    idxs = [torch.randint(0, n, (1024,), generator=torch.Generator().manual_seed(s)).cuda() for s in range(8)]
    runs = []
    for graph in (False, True):
        model, data, cfg = _setup("cuda")
        stepper = Stepper(model, data, cfg, torch.device("cuda"), cuda_graph=graph, warmup=2)
        mses = []
        for step, idx in enumerate(idxs):
            stepper.schedule(step / len(idxs))
            mses.append(stepper(idx))
        assert (stepper.graph is not None) == graph
        runs.append((torch.stack(mses).cpu(), model.alpha_grid.table.detach().cpu()))
    # the same kernels in the same order; only float atomics may reorder sums
    assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-3)
    assert torch.allclose(runs[0][1], runs[1][1], rtol=1e-3, atol=1e-6)


def _mses(device: str, **stepper_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    n = GEOM.num_frames * GEOM.height * GEOM.width
    torch.manual_seed(0)  # the modules' own initialisation
    model, data, cfg = _setup(device)
    stepper = Stepper(model, data, cfg, torch.device(device), **stepper_kwargs)
    mses = []
    for step in range(4):
        stepper.schedule(step / 4)
        mses.append(stepper(torch.randint(0, n, (1024,), generator=torch.Generator().manual_seed(step)).to(device)))
    return torch.stack(mses).cpu(), model.alpha_grid.table.detach().cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_compiled_steps_match_eager_steps(device):
    torch._dynamo.reset()
    (eager_mse, eager_table), (mse, table) = _mses(device), _mses(device, compile=True)
    # the same arithmetic, fused: only the order of float sums may differ
    assert torch.allclose(mse, eager_mse, rtol=1e-4)
    assert torch.allclose(table, eager_table, rtol=1e-3, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.allclose(table, _setup(device)[0].alpha_grid.table.detach().cpu(), atol=1e-4)  # the steps did train


def test_compile_failure_falls_back_to_eager_steps(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("inductor: no working C++ compiler\nmore details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(inductor: no working C\+\+ compiler\); running steps eagerly"):
        mse, table = _mses("cpu", compile=True)
    eager_mse, eager_table = _mses("cpu")
    assert torch.equal(mse, eager_mse) and torch.equal(table, eager_table)


def test_compiled_cpu_steps_are_deterministic():
    """Compiled, the transforms' gradient could be an atomic scatter-add whose sum order
    varies run to run (it did, in 4 of 4 tries without the fix); CPU fits must repeat."""
    n = GEOM.num_frames * GEOM.height * GEOM.width

    def run() -> torch.Tensor:
        torch.manual_seed(0)
        model, data, cfg = _setup("cpu")
        stepper = Stepper(model, data, cfg, torch.device("cpu"), compile=True)
        for step in range(10):
            stepper.schedule(step / 10)
            stepper(torch.randint(0, n, (8192,), generator=torch.Generator().manual_seed(step)))
        return torch.cat([m.transforms.detach().flatten() for m in model.mappings])

    first = run()
    for _ in range(3):
        assert torch.equal(run(), first)
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored after each step
