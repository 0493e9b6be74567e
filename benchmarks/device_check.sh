#!/usr/bin/env bash
# One prepared run for a lent GPU (see docs/performance.md). From the repo root:
#   bash benchmarks/device_check.sh            (writes under $OUT, else runs/device)
# 1. CUDA correctness: engine on CUDA vs the CPU oracle, CUDA-graph replay vs eager vs reference,
#    the Triton decode kernel and the fused decode kernels compiled (vs their torch twins), the fused
#    step vs the modular one, overlapped vs synchronous decoding, flex-attention training path;
# 2. the speed benchmark (Qwen2.5-1.5B shape, bf16, random weights): decode ms/step of the default
#    (CUDA graphs + fused step + overlapped decoding), without the overlap, and without the fused step
#    either (session 2's configuration), transformers side by side, 32 requests x 8 paths sustained
#    tokens/s + roofline, summary TTFT (KV reuse vs re-prefill) for P 2-16 x paths of 1K-16K tokens;
# 3. prompt prefill: plain causal (flash) vs the explicit-mask reference vs transformers (prefill_bench.py);
# 4. a kernel-level profile of the decode step (P 1 and 16, fused and modular): the captured graph's
#    kernels and the whole step's, per step (benchmarks/step_profile.py).
# Sized for ~7 minutes on an H200 (at most 120 + 330 + 60 + 90 s) (each phase under its own timeout; a failing test or benchmark row
# is reported in its log/JSON and the script goes on). Files under $OUT: gpu.txt, gpu_tests.log,
# bench.log, engine_bench.json (written after every row), engine_bench.png, prefill.{log,json}, profile.log, step_profile.{txt,json}.
# CPU smoke of the same benchmark code:  SMOKE=1 bash benchmarks/device_check.sh
# env: GPU_TESTS (pytest paths), TEST_TIMEOUT, BENCH_TIMEOUT, PREFILL_TIMEOUT, PROFILE_TIMEOUT (seconds; defaults 120, 330, 60, 90)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-runs/device}"
mkdir -p "$out"
if [ "${SMOKE:-0}" = "1" ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  echo "smoke run on the CPU (no GPU phases)" | tee "$out/gpu.txt"
  timeout 300 python3 benchmarks/engine_bench.py --shape tiny --device cpu --dtype float32 --attention triton \
    --paths 1,3 --contexts 40 --steps 6 --multi 2x2 --multi-context 16 --multi-steps 6 \
    --summary-paths 2,3 --summary-lens 8,40 --reprefill-max-tokens 100 --fused both --overlap both --no-hf --out "$out" 2>&1 | tee "$out/bench.log"
  timeout 300 python3 benchmarks/prefill_bench.py --shape tiny --device cpu --lengths 64,256 --repeats 1 --batch 4x32 \
    --out "$out/prefill.json" 2>&1 | tee "$out/prefill.log"
  timeout 300 python3 benchmarks/step_profile.py --shape tiny --device cpu --dtype float32 --attention triton \
    --paths 1 --context 40 --steps 4 --out "$out" 2>&1 | tee "$out/profile.log"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$out/gpu.txt"
timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -m gpu -p no:cacheprovider -rfE ${GPU_TESTS:-tests/gpu tests/train/test_flex.py} 2>&1 | tee "$out/gpu_tests.log"
echo "gpu tests exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu_tests.log"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/engine_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --kv-gib 32 \
  --variants graphs+fused+overlap,graphs+fused,graphs --paths 1,16 --contexts 2048,16384 --steps 32 --hf-max-context 2048 \
  --multi 32x8 --multi-context 1024 --multi-steps 64 --summary-paths 2,4,8,16 --summary-lens 1024,4096,16384 \
  --reprefill-max-tokens 262144 --out "$out" 2>&1 | tee "$out/bench.log"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
timeout "${PREFILL_TIMEOUT:-60}" python3 benchmarks/prefill_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 \
  --lengths 2048,16384 --batch 32x1024 --out "$out/prefill.json" 2>&1 | tee "$out/prefill.log"
echo "prefill exit: ${PIPESTATUS[0]}" | tee -a "$out/prefill.log"
timeout "${PROFILE_TIMEOUT:-90}" python3 benchmarks/step_profile.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 \
  --paths 1,16 --context 2048 --out "$out" 2>&1 | tee "$out/profile.log"
echo "profile exit: ${PIPESTATUS[0]}" | tee -a "$out/profile.log"
