"""`atlas demo`: a self-contained run on a synthetic clip (no downloads, CPU friendly)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io import write_png, write_video
from .synthetic import make_clip


def run_demo(out: Path, quiet: bool = False, iters: int = 400) -> dict[str, object]:
    """Make a clip, fit it (`fast` preset), paint on the background atlas, propagate the
    edit to every frame, export; return what was written."""
    from editing import edit
    from propagation.export import export

    from .train import fit

    out.mkdir(parents=True, exist_ok=True)
    clip = make_clip(num_frames=12, width=96, height=64)
    source = write_video(clip.frames, out / "input.mp4", fps=clip.fps)
    bundle = fit(source, out / "clip.atlas", "fast", iters=iters, quiet=quiet)
    recon = write_video(bundle.render(), out / "reconstruction.mp4", fps=bundle.fps)
    painted = bundle.textures["background"].copy()
    text = np.zeros(painted.shape[:2], np.uint8)
    cv2.putText(text, "atlas", (8, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
    painted[text > 0, :3] = 1.0
    write_png(out / "painted_background.png", painted)
    edited = write_video(edit(bundle, atlas={"background": painted}).frames, out / "edited.mp4", fps=bundle.fps)
    exported = export(bundle, out / "export")
    return {
        "input": source,
        "bundle": out / "clip.atlas",
        "reconstruction": recon,
        "painted atlas": out / "painted_background.png",
        "edited video": edited,
        "export": exported,
        "mean PSNR (dB)": bundle.meta.metrics["psnr_mean"],
    }
