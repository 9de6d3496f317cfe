"""`atlas.fit`: video -> preprocessing -> layered atlas optimisation -> AtlasBundle.

Each step samples random pixels of random frames and minimises:
reconstruction + flow consistency of uv + residual rigidity, size and change where the flow
is blind + annealed mask bootstrap + opacity flow consistency + foreground sparsity.
Checkpoints allow `--resume`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

import cuda_ext

from . import __version__, interrupt
from .bake import Coverage, bake, texture_size
from .bundle import FORMAT_VERSION, AtlasBundle, cache_has_room, check_output_dir, layer_names
from .config import FitConfig, load_config, update_config
from .diagnose import layer_health
from .errors import AtlasInputError, first_line
from .evaluate import evaluate_frame, psnr
from .initialise import initial_layout
from .io import (Video, check_not_input, check_writable, output_lock, output_path, parse_frame_range, parse_size, probe_itemsize,
                 probe_video, read_video, unit_float)
from .memory import check_fit_memory
from .spill import Alloc, Spill
from .meta import BundleCorrupt, BundleMeta, LayerInfo, SourceInfo
from .model import FrameGeometry, LayeredAtlas
from .preprocess import Preprocessed, preprocess
from .quality import QualityStats
from .step import Stepper, step_data


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AtlasInputError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise AtlasInputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class _Checkpoint:
    """`<bundle>.ckpt/`: preprocessing + model/optimiser state, so a fit can resume."""

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".ckpt")

    def save_preprocess(self, pre: Preprocessed, meta: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save_file(pre.tensors(), str(self.dir / "preprocess.safetensors"))
        (self.dir / "meta.json").write_text(json.dumps(meta))

    def load_preprocess(self, key: str, geom: FrameGeometry, alloc: Alloc) -> Preprocessed | None:
        f, m = self.dir / "preprocess.safetensors", self.dir / "meta.json"
        if not (f.is_file() and m.is_file()):
            return None
        with self.corrupt_is_input_error():
            saved = json.loads(m.read_text())
            if not isinstance(saved, dict):
                raise ValueError("meta.json is not an object")
            if saved.get("key") != key:
                raise AtlasInputError(f"--resume: {self.dir} was made for a different input or settings; delete it or drop --resume")
            return Preprocessed.read(f, str(saved["flow"]), str(saved["masks"]), geom, alloc)

    def save_state(self, model: LayeredAtlas, opt: torch.optim.Optimizer, step: int, gen: torch.Generator, elapsed: float) -> None:
        tmp = self.dir / "state.pt.tmp"
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step, "rng": gen.get_state(), "elapsed": elapsed}, tmp)
        os.replace(tmp, self.dir / "state.pt")

    def load_state(self) -> dict[str, Any] | None:
        f = self.dir / "state.pt"
        if not f.is_file():
            return None
        with self.corrupt_is_input_error():
            state = torch.load(f, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"model", "optim", "step", "rng", "elapsed"} <= set(state):
                raise ValueError("state.pt lacks the model, optimiser or step")
            return state

    @contextlib.contextmanager
    def corrupt_is_input_error(self) -> Iterator[None]:
        """A checkpoint that cannot be read back (truncated, edited, not ours) is the user's
        to delete: one line, not a traceback."""
        try:
            yield
        except BundleCorrupt as exc:
            raise AtlasInputError(f"--resume: the checkpoint {self.dir} is corrupt ({exc}); delete it or drop --resume") from None
        except AtlasInputError:
            raise
        except PermissionError:
            raise
        except Exception as exc:  # json, safetensors, torch.load and shape errors come in many types
            raise AtlasInputError(f"--resume: the checkpoint {self.dir} is corrupt ({first_line(exc)}); delete it or drop --resume") from None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _RunningPsnr:
    """Moving average of the batch MSE as a PSNR, and when it first reached 25/30/33 dB.

    Batch MSEs stay on the device and are read back every `every` steps, so a GPU step
    never waits for the host (one sync per `every` steps instead of one per step).
    """

    def __init__(self, every: int) -> None:
        self.every, self.pending, self.ema, self.reached = max(every, 1), [], None, {}

    def add(self, mse: torch.Tensor, elapsed: float) -> None:
        self.pending.append(mse.detach())
        if len(self.pending) >= self.every:
            self.flush(elapsed)

    def flush(self, elapsed: float) -> None:
        for v in torch.stack(self.pending).tolist() if self.pending else []:
            if not np.isfinite(v):
                raise AtlasInputError("the fit diverged (its loss became NaN or infinite): lower the learning rates "
                                      "(train.lr_grid, train.lr_mlp, train.lr_transform) or use a preset's values")
            self.ema = v if self.ema is None else 0.95 * self.ema + 0.05 * v
            for target in (25, 30, 33):
                if self.psnr >= target and target not in self.reached:
                    self.reached[target] = round(elapsed, 2)
        self.pending = []

    @property
    def psnr(self) -> float:
        return -10.0 * float(np.log10(max(self.ema, 1e-10))) if self.ema is not None else 0.0


def _train(model: LayeredAtlas, video: Video, pre: Preprocessed, cfg: FitConfig, device: torch.device, seed: int,
           time_budget: float | None, ckpt: _Checkpoint, resume_state: dict[str, Any] | None, quiet: bool) -> dict[str, Any]:
    g = model.geom
    tc = cfg.train
    stepper = Stepper(model, step_data(video.frames, pre, device), cfg, device, cuda_graph=tc.cuda_graph, compile=tc.compile)
    # drawn on the device: a host generator would need a host-to-device copy (a sync) per step
    gen = torch.Generator(device=device).manual_seed(seed)
    start, elapsed0 = 0, 0.0
    if resume_state is not None:
        with ckpt.corrupt_is_input_error():
            model.load_state_dict(resume_state["model"])
            stepper.load_optimizer(resume_state["optim"])
            gen.set_state(resume_state["rng"])
            start, elapsed0 = int(resume_state["step"]), float(resume_state["elapsed"])
    running, t0 = _RunningPsnr(tc.eval_every), time.perf_counter()
    with tqdm(total=tc.iters, initial=start, disable=quiet, desc="fit", unit="it", dynamic_ncols=True) as bar:  # closed before an error is printed
        step = start
        for step in range(start, tc.iters):
            interrupt.check()
            elapsed = elapsed0 + time.perf_counter() - t0
            if time_budget is not None and elapsed >= time_budget:
                break
            # schedules follow whichever limit comes first: steps or the time budget
            progress = step / max(tc.iters, 1)
            if time_budget is not None:
                progress = max(progress, elapsed / time_budget)
            stepper.schedule(progress)
            idx = torch.randint(0, g.num_frames * g.height * g.width, (tc.batch,), generator=gen, device=device)
            running.add(stepper(idx), elapsed0 + time.perf_counter() - t0)
            if not running.pending:  # just flushed
                bar.set_postfix(psnr=f"{running.psnr:.2f}dB", refresh=False)
            bar.update(1)
            if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0 and step + 1 < tc.iters:
                ckpt.save_state(model, stepper.opt, step + 1, gen, elapsed0 + time.perf_counter() - t0)
        else:
            step = tc.iters
        running.flush(elapsed0 + time.perf_counter() - t0)
        stepper.opt.zero_grad(set_to_none=True)  # frees the gradients (a CUDA graph's pool) before evaluation
    fit_s = elapsed0 + time.perf_counter() - t0
    return {"iterations": step, "fit_s": round(fit_s, 2), "running_psnr_reached_s": {str(k): v for k, v in running.reached.items()},
            "iters_per_s": round((step - start) / max(time.perf_counter() - t0, 1e-9), 3)}


def fit(
    video: str | Path | Video | np.ndarray | torch.Tensor,
    out: str | Path,
    config: str | Path | dict | None = "default",
    overrides: list[str] | dict | None = None,
    *,
    masks: str | None = None,
    flow: str | None = None,
    device: str = "auto",
    frames: str | tuple[int, int | None] | None = None,
    size: str | tuple[int, int] | None = None,
    iters: int | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    resume: bool = False,
    quiet: bool = False,
    raft_weights: str | None = None,
    sam_checkpoint: str | None = None,
    sam_prompt: str | None = None,
    allow_gaps: bool = False,
) -> AtlasBundle:
    """Register a video into layered atlases and save the bundle at `out`.

    `video` is a movie or image-sequence path, a :class:`Video`, or frames in memory
    ([T, H, W, 3] array or tensor, uint8 or float in [0, 1]; see :func:`read_video`).
    Everything about the inputs and the output is checked before the slow work starts,
    and the output is locked for the whole fit, so two fits never write one bundle.

    Example:
        >>> bundle = fit("clip.mp4", out="clip.atlas", config="fast")
    """
    out = output_path(out)
    footage = None if isinstance(video, (Video, np.ndarray, torch.Tensor)) else video
    check_not_input(out, [("the footage", footage), ("--masks", masks), ("--raft-weights", raft_weights), ("--sam-checkpoint", sam_checkpoint)])
    check_output_dir(out)
    check_writable(out)
    cfg = load_config(config, overrides)
    if flow is not None:
        update_config(cfg, {"preprocess": {"flow": flow}})
    if iters is not None:
        if iters < 1:
            raise AtlasInputError("--iters must be at least 1")
        cfg.train.iters = iters
    if time_budget is not None and time_budget <= 0:
        raise AtlasInputError("--time-budget must be positive (seconds)")
    if masks is not None:
        if not Path(masks).exists():
            raise AtlasInputError(f"--masks folder not found: {masks}")
        if not Path(masks).is_dir():
            raise AtlasInputError(f"--masks expects a folder of mask images (one per frame), and {masks} is a file")
    if sam_prompt is not None and sam_checkpoint is None:
        raise AtlasInputError("--sam-prompt needs --sam-checkpoint (the SAM weights to prompt)")
    dev = pick_device(device)
    frame_range = parse_frame_range(frames) if isinstance(frames, str) else frames
    shot_size = parse_size(size) if isinstance(size, str) else size
    # refuse a shot too large for memory before decoding it, and decide whether it spills
    if isinstance(video, Video):
        if frame_range is not None:
            raise AtlasInputError("frames= picks frames from a path or an array; a Video is fitted whole (slice it instead)")
        count, (w, h) = len(video.frames), shot_size or video.size
        channel_bytes = probe_itemsize(video.frames[:1], cfg.preprocess.frame_depth)
    else:
        count, w, h = probe_video(video, frame_range, shot_size, allow_gaps)
        channel_bytes = probe_itemsize(video, cfg.preprocess.frame_depth, allow_gaps) if count else 1
    spill = (check_fit_memory(count, h, w, cfg.model, dev, cfg.train.batch, cfg.train.spill, out.parent, channel_bytes) if count
             else cfg.train.spill == "always")
    with output_lock(out, "atlas fit"), Spill(out, spill) as spilled:
        return _fit(video, out, cfg, dev, masks, frame_range, shot_size, time_budget, seed, resume, quiet, raft_weights,
                    sam_checkpoint, sam_prompt, allow_gaps, spilled)


def _fit(video: str | Path | Video | np.ndarray | torch.Tensor, out: Path, cfg: FitConfig, dev: torch.device, masks: str | None,
         frames: tuple[int, int | None] | None, size: tuple[int, int] | None, time_budget: float | None, seed: int, resume: bool,
         quiet: bool, raft_weights: str | None, sam_checkpoint: str | None, sam_prompt: str | None, allow_gaps: bool,
         spill: Spill) -> AtlasBundle:
    """The fit itself, once :func:`fit` has checked its arguments, locked `out` and opened
    the spill (where the shot's arrays are made)."""
    torch.manual_seed(seed)
    cv2.setRNGSeed(seed)
    backend = cuda_ext.resolve_backend(cfg.model.encoding_backend, dev)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    depth = cfg.preprocess.frame_depth
    vid = (video.resized(size, spill.empty, depth) if isinstance(video, Video)
           else read_video(video, frames, size, allow_gaps=allow_gaps, alloc=spill.empty, depth=depth))
    timings["read_s"] = round(time.perf_counter() - t0, 2)
    T, H, W = vid.frames.shape[:3]
    check_fit_memory(T, H, W, cfg.model, dev, cfg.train.batch, "always" if spill.enabled else "never", out.parent,
                     vid.frames.element_size())
    geom = FrameGeometry(T, H, W)
    ckpt = _Checkpoint(out)
    # what a checkpoint must match to be resumed: the model layout (format), inputs,
    # preprocessing and architecture (train/loss settings may change, e.g. more --iters)
    key = json.dumps([FORMAT_VERSION, vid.source, vid.frame_range, [W, H], masks, sam_checkpoint, sam_prompt, seed,
                      cfg.to_dict()["preprocess"], cfg.to_dict()["model"]])
    pre = ckpt.load_preprocess(key, geom, spill.empty) if resume else None
    resume_state = ckpt.load_state() if resume else None
    t0 = time.perf_counter()
    if pre is None:
        pre = preprocess(vid.frames, cfg.preprocess.flow, masks, vid.frame_range, cfg.preprocess.motion_threshold,
                         raft_weights, sam_checkpoint, sam_prompt, dev, progress=not quiet, allow_gaps=allow_gaps,
                         long_range_stride=cfg.preprocess.long_range_stride, long_range_samples=cfg.preprocess.long_range_samples,
                         seed=seed, alloc=spill.empty, colour_refine=cfg.preprocess.colour_refine)
        ckpt.save_preprocess(pre, {"key": key, "flow": pre.flow_method, "masks": pre.mask_source})
    timings["preprocess_s"] = round(time.perf_counter() - t0, 2)

    names = layer_names(cfg.model.num_foregrounds)
    transforms, lo, hi, chains = initial_layout(pre, geom, cfg.model.num_foregrounds, seed)
    model = LayeredAtlas(geom, cfg.model, names, transforms, lo, hi, backend=cfg.model.encoding_backend).to(dev)
    if not quiet:
        tqdm.write(f"atlas fit: {T} frames {W}x{H}, layers {names}, flow {pre.flow_method}, masks {pre.mask_source}, "
                   f"device {dev.type}, encoding backend {backend}{', compiled step' if cfg.train.compile else ''}")
    if resume and not quiet:
        start = f"step {resume_state['step']}" if resume_state is not None else "the first step (no checkpoint yet)"
        tqdm.write(f"atlas fit: --resume from {start} in {ckpt.dir}")
    stats = _train(model, vid, pre, cfg, dev, seed, time_budget, ckpt, resume_state, quiet)
    timings["fit_s"] = stats.pop("fit_s")

    # every frame is evaluated once and feeds the PSNR, the atlases' coverage and the quality
    # statistics; only as many frames' maps as the bundle caches are kept
    t0 = time.perf_counter()
    model.eval()
    sizes = [texture_size(model, i) for i in range(len(names))]
    cov, qstats = Coverage(sizes), QualityStats(model, pre, sizes)
    per_frame, gains, maps = [], [], {}
    for t in tqdm(range(T), desc="evaluate", unit="frame", disable=quiet, leave=False, dynamic_ncols=True):
        fm = evaluate_frame(model, t)
        frame = unit_float(vid.frames[t])
        per_frame.append(round(psnr(fm.rgb, frame), 3))
        if fm.gain is not None:
            gains.append(round(float(fm.gain.mean()), 4))
        cov.add(fm)
        qstats.add(t, fm, frame)
        if cache_has_room(len(maps), fm):
            maps[t] = fm
    timings["evaluate_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    textures = bake(model, cov.masks())
    quality, quality_summary = qstats.result()
    psnr_mean = round(float(np.mean(per_frame)), 3)
    health, warns = layer_health(model, pre, chains, textures, psnr_mean, vid.frame_range[0])
    # how much coarser than its footprint the most blurred frame reads each layer
    blur = None if model.blur is None else torch.exp2(model.blur.detach()).cpu().expand(-1, len(names))
    for i, name in enumerate(names):
        quality_summary[name].update(health[name])
        if blur is not None:
            quality_summary[name].update(blur_max=round(float(blur[:, i].max()), 3), blur_frame=int(blur[:, i].argmax()) + vid.frame_range[0])
    for line in warns:
        warnings.warn(line, stacklevel=2)
    timings["bake_s"] = round(time.perf_counter() - t0, 2)
    source_path = str(Path(vid.source).resolve()) if Path(vid.source).exists() else vid.source
    meta = BundleMeta(
        format_version=FORMAT_VERSION,
        tool_version=__version__,
        source=SourceInfo(source_path, vid.fps, list(vid.frame_range), T, [W, H], list(vid.source_size or (W, H))),
        layers=[LayerInfo(n, list(textures[n].shape[1::-1]), lo[i].tolist(), hi[i].tolist()) for i, n in enumerate(names)],
        config=cfg.to_dict(),
        metrics={"psnr_per_frame": per_frame, "psnr_mean": psnr_mean, "shading_gain_per_frame": gains or None,
                 "layers": quality_summary, "warnings": warns, **stats},
        timings=timings,
        seed=seed,
        encoding_backend=backend,
        device=dev.type,
        preprocess={"flow": pre.flow_method, "masks": pre.mask_source},
    )
    bundle = AtlasBundle(model.cpu(), meta, textures, pre, quality=quality)
    bundle.remember_maps(maps)
    bundle.save(out)
    ckpt.remove()
    return bundle
