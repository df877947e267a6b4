#!/usr/bin/env bash
# The project's CUDA checks, for a lent GPU machine (the device tool: ../.library/device/README.md).
# One call, at most ~8 minutes: the train-step benchmark with bf16 AMP and channels_last, the APS
# benchmark on CUDA, the CUDA-only tests, and a short CUDA-vs-CPU training parity check. Results land in $OUT (and in
# results/bench/ of the copy there); copy them back into results/bench/ here and commit them.
#
#   device run: command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540
#
# The device image lacks some of the project's pure-Python dependencies: their wheels travel in .whl/
# (git-excluded), downloaded here beforehand, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pycocotools submitit cloudpickle
set -uo pipefail
OUT="${OUT:-/tmp/device-out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || exit 1
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
R="python3 -m replicate.cli"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  for m in retinanet fcos; do
    timeout 120 $R bench train-step --model $m --device cuda --size 800x1333 --batch-size 8 --amp bf16 --channels-last \
      --out "$OUT/train-step_${m}_cuda_bf16_cl.json"
    timeout 90 $R bench train-step --model $m --device cuda --size 800x1333 --batch-size 8 \
      --out "$OUT/train-step_${m}_cuda_fp32.json"
  done
  timeout 90 $R bench aps --device cuda --score paper --out "$OUT/aps_paper_cuda.json"
  timeout 90 $R bench aps --device cuda --score code --out "$OUT/aps_code_cuda.json"
  # the CUDA-only tests (the GMM's CUDA-graph engine against its loop), skipped on CPU machines
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m "not slow" -k cuda tests/test_aps.py
  timeout 120 python3 -m replicate.bench.parity --iters 20 --out "$OUT/parity_cuda_cpu.json"
} 2>&1 | tee "$OUT/device_check.log"
