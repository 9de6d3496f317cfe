"""Prompt editors: wall time and peak memory per method (after fitting).

    python bench/editing_bench.py                         # tiny random models, CPU (what CI-like machines can run)
    python bench/editing_bench.py --model PATH_OR_ID --controlnet PATH_OR_ID \\
        --resolution 512 --steps 30 --clip $ATLAS_BENCH_DATA/davis/blackswan --frames 70   # real SD 1.5 on a GPU
    python bench/editing_bench.py --random-sd15 --resolution 512 --steps 30 --frames 70   # SD 1.5's cost, no weights

Without --model it builds randomly initialised Stable Diffusion parts as the tests do:
tiny ones by default (times then measure our code and the pipeline plumbing), or with
--random-sd15 ones with SD 1.5's and ControlNet 1.0's exact architecture, whose time and
memory are a real model's (their images are noise). Peak memory is the GPU's peak
allocation when the editors run on CUDA, else the process's peak RSS. The fit (preset
fast, --fit-iters) is not part of the timed edit.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import atlas  # noqa: E402
from atlas.io import Video, read_video  # noqa: E402
from atlas.synthetic import make_clip  # noqa: E402
from editing import edit  # noqa: E402
from editing.models import Runtime, release_models  # noqa: E402

METHODS = ("videdit", "diffusion-atlas", "stablevideo")


class PeakRSS:
    """Highest resident set size seen while the block runs (polled every 5 ms)."""

    def __enter__(self):
        self.proc, self.start, self.peak, self.done = psutil.Process(), psutil.Process().memory_info().rss, 0, False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.done:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Stable Diffusion 1.5 folder/file/cached id (default: tiny random models)")
    p.add_argument("--controlnet", help="ControlNet (canny) for videdit/stablevideo (default: tiny random, or none with --model)")
    p.add_argument("--random-sd15", action="store_true", help="random weights in SD 1.5's architecture instead of tiny models")
    p.add_argument("--clip", help="video or frame folder (default: a synthetic clip)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", default="160x120", help="fitted frame size WxH")
    p.add_argument("--resolution", type=int, default=64, help="diffusion working resolution (long side)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lora-steps", type=int, default=20)
    p.add_argument("--fit-iters", type=int, default=300)
    p.add_argument("--fit-device", default="auto", help="device for the (untimed) fit")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    a = p.parse_args()

    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            models = {"model": a.model, "controlnet": a.controlnet or "none"}
        else:
            from tiny_diffusion import SD15, TINY, save_controlnet, save_sd

            shapes = SD15 if a.random_sd15 else TINY
            models = {"model": str(save_sd(Path(tmp) / "sd", shapes)), "controlnet": str(save_controlnet(Path(tmp) / "cn", shapes))}
        if a.clip:
            video = read_video(a.clip, frames=(0, a.frames), size=(w, h))
        else:
            clip = make_clip(num_frames=a.frames, width=w, height=h)
            video = Video(clip.frames, clip.fps, "synthetic", (0, a.frames))
        t0 = time.perf_counter()
        bundle = atlas.fit(video, Path(tmp) / "b", "fast", iters=a.fit_iters, quiet=True, device=a.fit_device)
        print(f"fit: {video.frames.shape[0]} frames {w}x{h}, {a.fit_iters} iterations, {time.perf_counter() - t0:.1f} s")
        cuda = torch.cuda.is_available()
        print(f"editors on {'GPU ' + torch.cuda.get_device_name() if cuda else 'CPU'}, "
              f"{a.model or ('random SD 1.5-shaped models' if a.random_sd15 else 'tiny random models')}, {a.resolution}px, {a.steps} steps\n")
        print(f"{'method':<16} {'time s':>8} {'peak MB':>9} {'memory':<8} {'keyframes':>9}")
        for method in a.methods:
            extra = {"lora_steps": a.lora_steps} if method == "diffusion-atlas" else {}
            controlnet = "none" if method == "diffusion-atlas" else models["controlnet"]
            kwargs = dict(prompt="a red ball", method=method, frames=video.frames, model=models["model"], controlnet=controlnet,
                          steps=a.steps, resolution=a.resolution, runtime=Runtime(quiet=True), **extra)
            edit(bundle, **{**kwargs, "steps": 1, **{k: 1 for k in extra}})  # load + warm up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                out = edit(bundle, **kwargs)
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            peak, kind = (torch.cuda.max_memory_allocated() / 2**20, "VRAM") if cuda else (rss.peak_mb, "RSS")
            print(f"{method:<16} {dt:>8.2f} {peak:>9.0f} {kind:<8} {len(out.keyframes):>9}", flush=True)
        release_models()
    return 0


if __name__ == "__main__":
    sys.exit(main())
