#!/usr/bin/env bash
# One prepared run for a lent GPU (see docs/performance.md). From the repo root:
#   bash benchmarks/device_check.sh            (writes under $OUT, else runs/device)
# 1. CUDA correctness: engine on CUDA vs the CPU oracle, the Triton decode kernel compiled,
#    flex-attention training path; 2. the speed benchmark (Qwen2.5-1.5B shape, bf16, random).
# Sized for ~6 minutes on an H200; every step writes its log as it goes.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-runs/device}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu tests/train/test_flex.py 2>&1 | tee "$out/gpu_tests.log"
timeout 420 python3 benchmarks/engine_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 \
  --paths 1,4,16 --contexts 2048,16384 --steps 32 --summary-paths 2,4,8,16 --summary-lens 1024,4096,16384 \
  --out "$out" 2>&1 | tee "$out/bench.log"
