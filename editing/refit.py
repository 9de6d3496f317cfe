"""Re-fitting a foreground layer's opacity to an edited silhouette (DiffusionAtlas's shape
step), so an edit that grows or shrinks the object shows in every frame.

The edited atlas says, per texel, whether the layer is there (`shape`). Each pixel's target
opacity is that mask sampled where the pixel's mapping lands on the layer, inside the
edited part of the atlas (`box`), and its old opacity elsewhere; the opacity field is then
fine-tuned towards it. Mapping and colours are kept, so the edit stays glued where it was.
The result is a new bundle: the one given is not modified.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.bundle import AtlasBundle
from propagation.sample import sample

from .regions import Box


def refit_opacity(bundle: AtlasBundle, layer: str, shape: np.ndarray, box: Box, steps: int = 300, batch: int = 8192, seed: int = 0,
                  quiet: bool = True) -> AtlasBundle:
    """A copy of `bundle` whose `layer` (a foreground) opacity follows `shape` [h, w] in `box`."""
    index = bundle.layer_names.index(layer)
    if index == 0:
        raise ValueError("the background has no opacity to re-fit")
    model = copy.deepcopy(bundle.model)
    device = next(model.parameters()).device
    h, w = shape.shape
    x0, y0, x1, y1 = box
    lo = torch.tensor([x0 / w, y0 / h], device=device)
    hi = torch.tensor([x1 / w, y1 / h], device=device)
    target_tex = torch.from_numpy(shape.astype(np.float32))[..., None].to(device)
    for name, p in model.named_parameters():  # only the opacity field learns
        p.requires_grad_(name.startswith(("alpha_grid.", "alpha_net.")))
    cfg = bundle.config.train
    opt = torch.optim.Adam([{"params": model.alpha_grid.parameters(), "lr": cfg.lr_grid},
                            {"params": model.alpha_net.parameters(), "lr": cfg.lr_mlp}])
    gen = torch.Generator().manual_seed(seed)
    g = model.geom
    for _ in tqdm(range(steps), desc="re-fitting opacity", disable=quiet, leave=False):
        xy = (torch.rand(batch, 2, generator=gen) * torch.tensor([g.width, g.height])).floor().to(device)
        t = torch.randint(0, g.num_frames, (batch,), generator=gen).to(device)
        with torch.no_grad():
            uv = model.mappings[index](xy, t)
            target = bundle.model.alpha(xy, t).to(device)
            inside = ((uv >= lo) & (uv < hi)).all(dim=1)
            target[inside, index - 1] = sample(target_tex, uv[inside])[:, 0]
        alpha = model.alpha(xy, t).clamp(1e-5, 1 - 1e-5)
        loss = torch.nn.functional.binary_cross_entropy(alpha, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    textures = dict(bundle.textures)
    tex = textures[layer].copy()
    tex[y0:y1, x0:x1, 3] = shape[y0:y1, x0:x1] > 0.5
    textures[layer] = tex
    return AtlasBundle(model, copy.deepcopy(bundle.meta), textures, bundle.cache, None, bundle.quality)
