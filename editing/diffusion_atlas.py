"""DiffusionAtlas-style editing: adapt Stable Diffusion to this video's atlas, invert the
atlas with DDIM, and regenerate it with the target prompt.

1. LoRA fine-tune of the UNet's attention projections (peft) on random crops of the layer's
   atlas, so the model's prior matches the atlas's look (its textures, its distortions);
2. DDIM inversion (DDIMInverseScheduler) of the region's crop under the source prompt, up
   to `strength` of the schedule;
3. DDIM sampling back down from the inverted latents under the target prompt with
   classifier-free guidance; the result is pasted into the region with a feather.

4. with the edited object's silhouette (`shape_mask`, or SAM on the edited atlas), the
   layer's opacity is re-fitted to it (editing.refit), so a grown or shrunk object shows
   in every frame; without one the edit is clipped to the fitted opacity.

The LoRA is removed afterwards, so later edits in the process see the original model.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.bundle import AtlasBundle
from atlas.errors import AtlasInputError

from .diffuse import PromptEdit, resize, working_size
from .models import load_pipeline
from .refit import refit_opacity
from .regions import atlas_region, bounding_box, feather, paste

ADAPTER = "atlas_lora"


def _latent_dist(pipe, images: np.ndarray):
    """[B, H, W, 3] float images -> the VAE's latent distribution (unscaled)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(pipe.device, pipe.vae.dtype) * 2 - 1
    return pipe.vae.encode(x).latent_dist


def _to_latents(pipe, images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] float images -> scaled VAE latents (the distribution's mean)."""
    return _latent_dist(pipe, images).mean * pipe.vae.config.scaling_factor


def _from_latents(pipe, z: torch.Tensor) -> np.ndarray:
    x = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()


def adapt_lora(pipe, atlas: np.ndarray, size: tuple[int, int], prompt_embeds: torch.Tensor, steps: int, rank: int, seed: int,
               quiet: bool) -> None:
    """Add a LoRA adapter to pipe.unet and train it on random crops of `atlas` (RGB)."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=ADAPTER)
    cast_training_params(unet, dtype=torch.float32)
    if unet.device.type == "cuda":
        unet.enable_gradient_checkpointing()  # SD 1.5 at 512 px: activations dominate VRAM
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    # Crops of about half the atlas, seen at the working size. The whole atlas is encoded
    # once at that scale and training crops its latents: no VAE pass per step.
    h, w = atlas.shape[:2]
    ch, cw = min(h, max(size[1], h // 2)), min(w, max(size[0], w // 2))
    f = pipe.vae_scale_factor
    full = (f * -(-round(w * size[0] / cw) // f), f * -(-round(h * size[1] / ch) // f))
    with torch.no_grad():
        dist = _latent_dist(pipe, resize(np.ascontiguousarray(atlas), full)[None])
    lh, lw = size[1] // f, size[0] // f
    sched = pipe.scheduler
    unet.train()
    for _ in tqdm(range(steps), desc="LoRA on the atlas", disable=quiet, leave=False):
        y0 = int(torch.randint(0, dist.mean.shape[2] - lh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, dist.mean.shape[3] - lw + 1, (1,), generator=gen))
        win = (..., slice(y0, y0 + lh), slice(x0, x0 + lw))
        eps = torch.randn(dist.mean[win].shape, generator=gen).to(dist.mean)
        z = (dist.mean[win] + dist.std[win] * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(z.shape, generator=gen).to(z)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=gen).to(z.device)
        with torch.autocast(z.device.type, enabled=z.device.type == "cuda"):
            pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=prompt_embeds).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    if unet.device.type == "cuda":
        unet.disable_gradient_checkpointing()


@torch.no_grad()
def invert_and_regenerate(pipe, z: torch.Tensor, edit: PromptEdit, source_embeds: torch.Tensor, quiet: bool) -> torch.Tensor:
    """Latents DDIM-inverted to `edit.strength` of the schedule under the source prompt, then
    sampled back down under the target prompt with classifier-free guidance."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    forward = DDIMScheduler.from_config(pipe.scheduler.config)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    forward.set_timesteps(edit.steps, device=pipe.device)
    inverse.set_timesteps(edit.steps, device=pipe.device)
    depth = max(1, int(round(edit.steps * edit.strength)))
    for t in tqdm(inverse.timesteps[:depth], desc="DDIM inversion", disable=quiet, leave=False):
        z = inverse.step(pipe.unet(z, t, encoder_hidden_states=source_embeds).sample, t, z).prev_sample
    cond, uncond = pipe.encode_prompt(edit.prompt, pipe.device, 1, True, edit.negative_prompt or None)
    embeds = torch.cat([uncond, cond])
    for t in tqdm(forward.timesteps[-depth:], desc="DDIM sampling", disable=quiet, leave=False):
        noise_uncond, noise_cond = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=embeds).sample.chunk(2)
        z = forward.step(noise_uncond + edit.guidance * (noise_cond - noise_uncond), t, z).prev_sample
    return z


def diffusion_atlas(bundle: AtlasBundle, edit: PromptEdit, layer: str, region_mask=None, source_prompt: str = "",
                    lora_steps: int = 200, lora_rank: int = 4, shape_mask=None, sam_checkpoint: str | None = None,
                    refit_steps: int = 300) -> tuple[dict[str, np.ndarray], AtlasBundle]:
    """({layer: RGBA edit}, the bundle to render with: `bundle`, or a copy whose opacity
    follows the edited silhouette when one is given)."""
    if (shape_mask is not None or sam_checkpoint) and layer == bundle.layer_names[0]:
        raise AtlasInputError("--shape-mask/--sam-checkpoint re-fit a foreground's opacity; the background has none (use --layer)")
    region = atlas_region(bundle, layer, region_mask)
    tex = bundle.textures[layer]
    box = bounding_box(region)
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(tex[y0:y1, x0:x1, :3])
    size = working_size(x1 - x0, y1 - y0, edit.resolution)
    pipe = load_pipeline("txt2img", edit.model, None, edit.runtime)
    quiet = edit.runtime.quiet
    try:
        with torch.no_grad():
            source_embeds = pipe.encode_prompt(source_prompt, pipe.device, 1, False)[0]
        if lora_steps > 0:
            adapt_lora(pipe, np.ascontiguousarray(tex[..., :3]), size, source_embeds, lora_steps, lora_rank, edit.seed, quiet)
        with torch.no_grad():
            z = invert_and_regenerate(pipe, _to_latents(pipe, resize(crop, size)[None]), edit, source_embeds, quiet)
            out = _from_latents(pipe, z)
    finally:
        if ADAPTER in getattr(pipe.unet, "peft_config", {}):
            pipe.unet.delete_adapters(ADAPTER)
    generated = resize(out, (x1 - x0, y1 - y0))
    shape = _silhouette(bundle, layer, tex, generated, box, shape_mask, sam_checkpoint)
    if shape is None:
        return {layer: paste(region.shape, generated, box, feather(region))}, bundle
    reshaped = refit_opacity(bundle, layer, shape, box, steps=refit_steps, seed=edit.seed, quiet=quiet)
    return {layer: paste(region.shape, generated, box, feather(shape))}, reshaped


def _silhouette(bundle: AtlasBundle, layer: str, tex: np.ndarray, generated: np.ndarray, box, shape_mask, sam_checkpoint) -> np.ndarray | None:
    """bool [h, w] where the edited object is, within `box`: a given mask, or SAM on the
    edited atlas prompted with the box; None when neither is asked for."""
    x0, y0, x1, y1 = box
    if shape_mask is not None:
        shape = atlas_region(bundle, layer, shape_mask)
    elif sam_checkpoint:
        from atlas.preprocess import sam_masks

        edited = tex[..., :3].copy()
        edited[y0:y1, x0:x1] = generated
        shape = sam_masks(edited[None], sam_checkpoint, f"{x0},{y0},{x1 - 1},{y1 - 1}")[0] > 0.5
    else:
        return None
    inside = np.zeros_like(shape)
    inside[y0:y1, x0:x1] = True
    return shape & inside
