"""Where one fitting step spends its time, op by op (torch.profiler), on the CPU or a GPU.

    python bench/step_profile.py [--device cuda] [--steps 20] [--preset fast] [--size 854x480] [--set train.cuda_graph=true] [--set train.compile=true]

Fits a synthetic 160x120x16 clip (--size) for two steps to get a model and its preprocessing, then
runs warm-up steps and profiles --steps more through the fitter's own Stepper. Prints the
top ops by self time and a summary: wall ms per step, device-busy ms per step (the sum of
GPU kernel times) and launches per step. Busy far below wall means the step is bound by
launch overhead, not by the GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas  # noqa: E402
from atlas.config import load_config  # noqa: E402
from atlas.io import Video  # noqa: E402
from atlas.step import Stepper, step_data  # noqa: E402
from atlas.synthetic import make_clip  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="fast")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--size", default="160x120", help="WxH of the synthetic clip (table sizes grow with it)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA GPU")
        return 0
    dev = torch.device(a.device)
    width, height = (int(v) for v in a.size.split("x"))
    clip = make_clip(num_frames=16, width=width, height=height)
    video = Video(clip.frames, clip.fps, "synthetic", (0, 16))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = atlas.fit(video, Path(tmp) / "b", a.preset, a.overrides, iters=2, device=a.device, quiet=True)
    cfg = load_config(a.preset, a.overrides)
    model = bundle.model.to(dev).train()
    stepper = Stepper(model, step_data(video.frames, bundle.cache, dev), cfg, dev, cuda_graph=cfg.train.cuda_graph,
                      compile=cfg.train.compile)
    g = model.geom
    gen = torch.Generator(device=dev).manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            stepper.schedule(0.5)
            stepper(torch.randint(0, g.num_frames * g.height * g.width, (cfg.train.batch,), generator=gen, device=dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()

    run(a.warmup)
    t0 = time.perf_counter()
    run(a.steps)
    wall = (time.perf_counter() - t0) / a.steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(a.steps)
    events = prof.key_averages()
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, preset {a.preset} "
          f"{' '.join(a.overrides)}, batch {cfg.train.batch}, backend {bundle.meta.encoding_backend}")
    print(events.table(sort_by=sort, row_limit=a.rows))
    print(f"wall {wall:.2f} ms/step ({1e3 / wall:.1f} it/s, unprofiled)")
    if dev.type == "cuda":
        busy = sum(e.self_device_time_total for e in events) / 1e3 / a.steps
        launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cudaGraphLaunch"))) / a.steps
        print(f"GPU busy {busy:.2f} ms/step; {launches:.0f} launches/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
