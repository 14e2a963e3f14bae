#!/usr/bin/env bash
# make gpu-check: the long GPU validation, the full plan of benchmarks/gpu_smoke.py (same steps,
# timeouts, report and exit status as `make gpu-smoke`, without its 8-minute budget):
#
#   1. builds fusedrnn with its CUDA extension for the local GPU (make build, pip kept off the network)
#   2. checks that fusedrnn._C has its CUDA kernels
#   3. runs every `gpu` and `triton` test on the GPU (pytest tests -m "gpu or triton", no interpreter)
#   4. runs compute-sanitizer memcheck and racecheck over the correctness check on small shapes,
#      which launches every CUDA kernel of every GPU backend, forward and backward, for every cell
#   5. runs the GPU benchmark (python -m fusedrnn.bench: its correctness check, then the default sweeps)
#   6. writes report.md, report.json and steps.log (plus the benchmark's JSON/CSV/markdown/PNG)
#      into $OUT, else benchmarks/results/gpu-check-<time>/
#
# Needs no network.  Every step runs even when an earlier one fails; without a GPU every GPU step is
# skipped, with the reason.  Exit status: 0 passed, 1 a step failed or timed out, 3 no CUDA device.
# About 20 minutes on an H100.
#
# Environment: PYTHON (default python), OUT (report folder), TORCH_CUDA_ARCH_LIST (default: the
# local GPU's), GPU_CHECK_SKIP_BUILD=1 (use the installed build), GPU_CHECK_BENCH_ARGS (extra
# benchmark arguments, e.g. "--shapes flashrnn"), GPU_CHECK_SANITIZER_TIMEOUT (seconds per
# sanitizer run, default 900).
set -euo pipefail

cd "$(dirname "$0")/.."
args=(--full --sanitizer-timeout "${GPU_CHECK_SANITIZER_TIMEOUT:-900}" --bench-args "${GPU_CHECK_BENCH_ARGS:-}")
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
    args+=(--skip-build)
fi
exec "${PYTHON:-python}" benchmarks/gpu_smoke.py "${args[@]}"
