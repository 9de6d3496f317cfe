#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (timed at 7 minutes on an H100 before the
# compiled and torch-reference step profiles were added; about 9 expected): the CUDA
# kernel and fitting-step tests, the encoding benchmark (with the fitter eager and from a
# CUDA graph), a profile of one fitting step (eager, graphed and compiled;
# eager with the torch reference encoding for the ratio), a fit's peak GPU memory
# against the estimate `atlas fit` checks, and the prompt editors
# with SD 1.5-shaped random weights (time and VRAM; needs the diffusion extras). Each
# check's output goes to the screen and to $OUT/<check>.txt; failures are listed at the end.
#   bash bench/gpu_checks.sh
set -uo pipefail  # one failing check does not stop the others; failures are listed at the end
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/atlas-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
failed=()
# check NAME COMMAND...: runs it, output to the screen and $out/NAME.txt
check() {
  local name=$1
  shift
  "$@" 2>&1 | tee "$out/$name.txt" || failed+=("$name")
}
check kernel_tests python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_step.py
check encoding python3 bench/encoding_bench.py --devices cuda --sizes 18 20 --fit-iters 300
check step_profile python3 bench/step_profile.py --device cuda --rows 15
check step_profile_torch python3 bench/step_profile.py --device cuda --rows 5 --set model.encoding_backend=torch
check step_profile_graph python3 bench/step_profile.py --device cuda --rows 15 --set train.cuda_graph=true
check step_profile_compile python3 bench/step_profile.py --device cuda --rows 15 --set train.compile=true
check step_profile_graph_compile python3 bench/step_profile.py --device cuda --rows 5 --set train.compile=true --set train.cuda_graph=true
check memory python3 bench/memory_bench.py --device cuda --sizes 854x480 427x240 --foregrounds 1
check editing python3 -W ignore bench/editing_bench.py --random-sd15 --resolution 512 --steps 30 --frames 70 --size 512x288 --lora-steps 200
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]} (outputs in $out)"
  exit 1
fi
