"""Randomly initialised Stable Diffusion parts saved the way real ones are, so the real
loading code runs without any download: tiny ones for tests (seconds on a CPU), and ones
with SD 1.5's exact architecture for benchmarking time and memory where no weights exist
(their images are noise; their cost is the real model's)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"

TINY = {
    "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4),
    "vae": dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16),
    "text": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16, projection_dim=16),
    "controlnet": dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
                       cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, conditioning_embedding_out_channels=(4, 8)),
}
# Stable Diffusion 1.5 / ControlNet 1.0 shapes (diffusers' defaults are SD's, except these)
SD15 = {
    "unet": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                 projection_dim=768),
    "controlnet": dict(cross_attention_dim=768, attention_head_dim=8),
}


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over single letters (vocab and merges written here)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def save_sd(folder: Path, shapes: dict = TINY, seed: int = 0) -> Path:
    """A Stable Diffusion 1.5-style pipeline (UNet, VAE, CLIP text model) in `folder`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **shapes["vae"])
    write_tokenizer(folder / "_tok")
    max_len = shapes["text"]["max_position_embeddings"]
    tokenizer = CLIPTokenizer(str(folder / "_tok" / "vocab.json"), str(folder / "_tok" / "merges.txt"), model_max_length=max_len)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1, **shapes["text"]))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "_tok")
    return folder


def save_controlnet(folder: Path, shapes: dict = TINY, seed: int = 1) -> Path:
    """A ControlNet that fits the UNet of the same `shapes`."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    ControlNetModel(in_channels=4, **shapes["controlnet"]).save_pretrained(folder)
    return folder


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    return save_sd(folder, TINY, seed)


def save_tiny_controlnet(folder: Path, seed: int = 1) -> Path:
    return save_controlnet(folder, TINY, seed)


def save_tiny_depth(folder: Path, seed: int = 2) -> Path:
    """A tiny DPT depth estimator and its image processor."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8,
                    neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, backbone_out_indices=[0, 1, 2, 3])
    DPTForDepthEstimation(cfg).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
