"""`atlas demo`: a self-contained run on a synthetic clip (no downloads, CPU friendly)."""
from __future__ import annotations

from pathlib import Path

from .io import write_video
from .synthetic import make_clip


def run_demo(out: Path, quiet: bool = False, iters: int = 400) -> dict[str, Path]:
    """Make a clip, fit it with the `fast` preset, render and export; return what was written."""
    from propagation.export import export

    from .train import fit

    out.mkdir(parents=True, exist_ok=True)
    clip = make_clip(num_frames=12, width=96, height=64)
    source = write_video(clip.frames, out / "input.mp4", fps=clip.fps)
    bundle = fit(source, out / "clip.atlas", "fast", iters=iters, quiet=quiet)
    recon = write_video(bundle.render(), out / "reconstruction.mp4", fps=bundle.fps)
    exported = export(bundle, out / "export")
    return {
        "input": source,
        "bundle": out / "clip.atlas",
        "reconstruction": recon,
        "atlas images": exported / "atlas",
        "opacity": exported / "alpha",
        "mean PSNR (dB)": bundle.meta["metrics"]["psnr_mean"],  # type: ignore[dict-item]
    }
