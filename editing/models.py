"""Loading diffusion models offline: Stable Diffusion 1.5-family pipelines, ControlNets and
structure annotators (SAM lives in atlas.preprocess.load_sam, shared with fitting).

A model is named by a local diffusers folder, a single .safetensors file, or a hub id that
is already in the local Hugging Face cache. Nothing is downloaded: a missing model is one
`ModelNotFoundError` that names it and says how to fetch it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from atlas.errors import AtlasInputError, first_line
from atlas.weights import load_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: never reach the network

DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = {"canny": "lllyasviel/sd-controlnet-canny", "hed": "lllyasviel/sd-controlnet-hed",
                      "depth": "lllyasviel/sd-controlnet-depth"}
DEFAULT_DEPTH = "Intel/dpt-hybrid-midas"
ENV_SD, ENV_CONTROLNET, ENV_HED, ENV_DEPTH = "ATLAS_SD_MODEL", "ATLAS_CONTROLNET", "ATLAS_HED_WEIGHTS", "ATLAS_DEPTH_MODEL"
ANNOTATORS = ("canny", "hed", "depth")

PIPELINES = {
    ("txt2img", False): "StableDiffusionPipeline",
    ("img2img", False): "StableDiffusionImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionInpaintPipeline",
    ("txt2img", True): "StableDiffusionControlNetPipeline",
    ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
}


class ModelNotFoundError(AtlasInputError):
    """A model is neither a local path nor in the local Hugging Face cache."""


@dataclass(frozen=True)
class Runtime:
    """Where and how models run. fp16 on a GPU, fp32 on the CPU unless `dtype` says otherwise;
    the memory savers trade speed for VRAM (cpu_offload needs a GPU and accelerate)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    quiet: bool = False

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise AtlasInputError("--device cuda was asked for but no CUDA GPU is visible")
        return dev

    @property
    def torch_dtype(self) -> torch.dtype:
        named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if self.dtype == "auto":
            return torch.float16 if self.torch_device.type == "cuda" else torch.float32
        if self.dtype not in named:
            raise AtlasInputError(f"dtype must be auto, fp32, fp16 or bf16, got {self.dtype!r}")
        return named[self.dtype]


def _not_found(what: str, ref: str, env: str | None) -> ModelNotFoundError:
    hint = f"download it once with `hf download {ref}` (or pass a local folder / .safetensors file"
    hint += f", or set {env})" if env else ")"
    return ModelNotFoundError(f"{what} {ref!r} is not on this machine and nothing is downloaded: {hint}")


def _load(cls: Any, ref: str, what: str, env: str | None, **kwargs: Any) -> Any:
    """cls.from_pretrained / from_single_file on a folder, a file or a cached hub id."""
    path = Path(ref).expanduser()
    looks_local = path.exists() or ref.startswith((".", "/", "~")) or path.suffix == ".safetensors"
    if looks_local and not path.exists():
        raise ModelNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.is_file():
                if path.suffix != ".safetensors":
                    raise AtlasInputError(f"{what} {path}: single-file models must be .safetensors (pickled .ckpt files are not loaded)")
                return cls.from_single_file(str(path), local_files_only=True, **kwargs)
            return cls.from_pretrained(str(path) if path.is_dir() else ref, local_files_only=True, **kwargs)
    except AtlasInputError:
        raise
    except (OSError, ValueError) as exc:  # huggingface_hub's "not cached" errors are OSErrors
        if looks_local:
            raise AtlasInputError(f"could not load {what} from {path}: {first_line(exc)}") from None
        raise _not_found(what, ref, env) from None


def sd_reference(model: str | None) -> str:
    return model or os.environ.get(ENV_SD) or DEFAULT_SD


def controlnet_reference(controlnet: str | None, annotator: str) -> str:
    return controlnet or os.environ.get(ENV_CONTROLNET) or DEFAULT_CONTROLNET[annotator]


_pipes: dict[tuple, Any] = {}


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise AtlasInputError("prompt edits need the diffusion extras: pip install -e '.[diffusion]'") from None
    return diffusers


def load_pipeline(task: str, model: str | None = None, controlnet: str | None = None, runtime: Runtime = Runtime()) -> Any:
    """A diffusers pipeline for task txt2img | img2img | inpaint, with a ControlNet when
    `controlnet` is given. Pipelines for one model share its weights (diffusers' from_pipe)
    and are kept for the process, so an editor can switch task without reloading."""
    diffusers = _diffusers()

    _quiet_libraries(runtime.quiet)
    if (task, controlnet is not None) not in PIPELINES:
        raise AtlasInputError(f"unknown diffusion task {task!r}; expected txt2img, img2img or inpaint")
    ref = sd_reference(model)
    key = (task, ref, controlnet, runtime)
    if key in _pipes:
        return _pipes[key]
    base_key = ("txt2img", ref, None, runtime)
    if base_key not in _pipes:
        base = _load(diffusers.StableDiffusionPipeline, ref, "Stable Diffusion model", ENV_SD, torch_dtype=runtime.torch_dtype,
                     safety_checker=None, requires_safety_checker=False)
        _pipes[base_key] = _prepare(base, runtime)
    cls = getattr(diffusers, PIPELINES[(task, controlnet is not None)])
    extra = {"controlnet": load_controlnet(controlnet, runtime)} if controlnet is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls.from_pipe(_pipes[base_key], **extra)
    _pipes[key] = _prepare(pipe, runtime)
    return pipe


def _quiet_libraries(no_progress: bool) -> None:
    """diffusers/transformers log advice meant for their developers: keep errors only, and
    their loading bars unless we are quiet."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        (lib.utils.logging.disable_progress_bar if no_progress else lib.utils.logging.enable_progress_bar)()


def load_controlnet(ref: str, runtime: Runtime = Runtime()) -> Any:
    return _load(_diffusers().ControlNetModel, ref, "ControlNet", ENV_CONTROLNET, torch_dtype=runtime.torch_dtype)


def _prepare(pipe: Any, runtime: Runtime) -> Any:
    if runtime.cpu_offload:
        if runtime.torch_device.type != "cuda":
            raise AtlasInputError("--cpu-offload needs a CUDA GPU (it moves each model to the GPU only while it runs)")
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(runtime.torch_device)
    if runtime.attention_slicing:
        pipe.enable_attention_slicing()
    if runtime.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=runtime.quiet, leave=False)
    return pipe


def release_models() -> None:
    """Forget every loaded pipeline (frees their memory once nothing else holds them)."""
    _pipes.clear()


def structure_map(image: np.ndarray, annotator: str = "canny", weights: str | None = None) -> np.ndarray:
    """[H, W, 3] float structure map of an [H, W, 3] float image, as ControlNets expect it.

    canny: OpenCV, no weights. hed: controlnet_aux's HED network (soft edges), weights from
    `weights` or $ATLAS_HED_WEIGHTS (ControlNetHED.pth, loaded with weights_only=True).
    depth: a transformers depth estimator (DPT/MiDaS, Depth Anything) from `weights`,
    $ATLAS_DEPTH_MODEL or the cached Intel/dpt-hybrid-midas; near is bright.
    """
    u8 = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if annotator == "canny":
        edges = cv2.Canny(cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY), 100, 200)
        return np.repeat(edges[..., None], 3, axis=2).astype(np.float32) / 255.0
    if annotator == "hed":
        side = max(u8.shape[:2])
        edges = _hed(weights)(u8, detect_resolution=side, image_resolution=side, output_type="np")
        return cv2.resize(edges, (u8.shape[1], u8.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    if annotator == "depth":
        return _depth_map(u8, weights)
    raise AtlasInputError(f"unknown annotator {annotator!r}; expected {' or '.join(ANNOTATORS)}")


_hed_cache: dict[str, Any] = {}


def _hed(weights: str | None) -> Any:
    ref = weights or os.environ.get(ENV_HED)
    if not ref:
        raise ModelNotFoundError(f"the hed annotator needs ControlNetHED.pth: pass its path or set {ENV_HED} "
                                 "(from the lllyasviel/Annotators repository), or use --annotator canny (no weights)")
    if ref not in _hed_cache:
        path = Path(ref).expanduser()
        if path.is_dir():
            path = path / "ControlNetHED.pth"
        if not path.is_file():
            raise ModelNotFoundError(f"HED weights not found: {path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector
        net = ControlNetHED_Apache2()
        try:
            net.load_state_dict(load_weights(path, "HED weights"))
        except (RuntimeError, KeyError, TypeError) as exc:
            raise AtlasInputError(f"{path} is not a ControlNetHED checkpoint: {first_line(exc)}") from None
        _hed_cache[ref] = HEDdetector(net.eval())
    return _hed_cache[ref]


_depth_cache: dict[str, Any] = {}


def _depth_map(u8: np.ndarray, weights: str | None) -> np.ndarray:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    ref = weights or os.environ.get(ENV_DEPTH) or DEFAULT_DEPTH
    if ref not in _depth_cache:
        _quiet_libraries(True)
        model = _load(AutoModelForDepthEstimation, ref, "depth model", ENV_DEPTH)
        _depth_cache[ref] = (_load(AutoImageProcessor, ref, "depth model's image processor", ENV_DEPTH), model.eval())
    processor, model = _depth_cache[ref]
    with torch.no_grad():
        depth = model(**processor(images=u8, return_tensors="pt")).predicted_depth[0].float().numpy()
    depth = cv2.resize(depth, (u8.shape[1], u8.shape[0]), interpolation=cv2.INTER_CUBIC)
    span = float(depth.max() - depth.min())
    depth = (depth - depth.min()) / span if span > 1e-6 else np.zeros_like(depth)  # flat: no structure
    return np.repeat(depth[..., None], 3, axis=2).astype(np.float32)
