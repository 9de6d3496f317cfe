#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (about 4 minutes on an H100):
# CUDA kernel and fitting-step tests, the encoding benchmark on the GPU (with the
# fitter eager and from a CUDA graph), a profile of one fitting step (eager and graphed),
# and the prompt editors with
# SD 1.5-shaped random weights (time and VRAM; needs the diffusion extras). Tables go to
# stdout and to $OUT (if set).
#   bash bench/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/atlas-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_step.py 2>&1 | tee "$out/kernel_tests.txt" | tail -3
python3 bench/encoding_bench.py --devices cuda --sizes 18 20 --fit-iters 300 2>&1 | tee "$out/encoding.txt"
python3 bench/step_profile.py --device cuda --rows 15 2>&1 | tee "$out/step_profile.txt"
python3 bench/step_profile.py --device cuda --rows 15 --set train.cuda_graph=true 2>&1 | tee "$out/step_profile_graph.txt"
python3 -W ignore bench/editing_bench.py --random-sd15 --resolution 512 --steps 30 --frames 70 --size 512x288 --lora-steps 200 \
  2>&1 | grep -v -i "warn\|shards" | tee "$out/editing.txt"
