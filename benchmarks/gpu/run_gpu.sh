#!/bin/bash
# The GPU rows of issue 15, in one run (~5-8 minutes on an H200; the device budget is ~15).
# Run from the repository root on the GPU machine:
#   bash benchmarks/gpu/run_gpu.sh            # writes benchmarks/results/<device>.json, RESULTS.md
# Measures, with the GPU preset of experiments/benchmark/setup.py (GPT-2-small-shaped
# 12 x 768, V 50,257, bf16, ~125M params): diffusion samplers vs AR with its KV cache at 256
# tokens, batch 1 and 32 (ancestral K 16/64/256, cached, threshold, block caches), the scan
# overhead, and training MFU at batch 16 x 1024. EXTRA: more flags (e.g. --tiny to check the
# script on a CPU); OUT: the results folder.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
python -c "import jax; print(jax.__version__, jax.devices())"
if ! python -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')"; then
  echo "no GPU visible to JAX: pip install -U 'jax[cuda12]' (or cuda13), then rerun" >&2
  [ -z "${EXTRA:-}" ] && exit 1
fi
timeout 540 python -m experiments.benchmark --sizes 256 --batch 1,32 --steps 16,64,256 \
  --cached_steps L --reps 3 --out "$OUT" ${EXTRA:-}
