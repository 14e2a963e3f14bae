#!/usr/bin/env bash
# make gpu-check: the one command an engineer with a GPU runs.
#
#   1. builds fusedrnn with its CUDA extension (pip install --no-build-isolation --no-deps --no-index -e .)
#   2. runs the `gpu` tests (pytest -m gpu)
#   3. runs compute-sanitizer memcheck and racecheck over the correctness check on small shapes,
#      which launches every CUDA kernel of every GPU backend, forward and backward, for every cell
#   4. runs the GPU benchmark (python -m fusedrnn.bench: its correctness check, then the timings)
#   5. writes report.md and report.json (plus the benchmark's JSON/CSV/markdown/PNG and every log)
#      into benchmarks/results/gpu-check-<time>/
#
# Needs no network.  Every step runs even when an earlier one fails (except that nothing runs
# without a GPU); the exit status is non-zero when any step failed.  About 20 minutes on an H100.
#
# Environment: PYTHON (default python), OUT (report folder), TORCH_CUDA_ARCH_LIST (default 9.0),
# GPU_CHECK_SKIP_BUILD=1 (use the installed build), GPU_CHECK_BENCH_ARGS (extra benchmark
# arguments, e.g. "--shapes flashrnn"), GPU_CHECK_SANITIZER_TIMEOUT (seconds per sanitizer run,
# default 900).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
SANITIZER_TIMEOUT=${GPU_CHECK_SANITIZER_TIMEOUT:-900}
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
: >"$STEPS"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: torch sees no CUDA GPU (torch.cuda.is_available() is False); nothing to check" >&2
    exit 1
fi

# step NAME LOG COMMAND...: run COMMAND with its output in LOG, record status and duration
step() {
    local name=$1 log=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "== $name (log: $log)"
    "$@" >"$log" 2>&1
    rc=$?
    tail -n 15 "$log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$log" >>"$STEPS"
    echo "== $name: exit status $rc"
}

# 1. build
if [ "${GPU_CHECK_SKIP_BUILD:-0}" != "1" ]; then
    step "build" "$OUT/build.log" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FUSEDRNN_REQUIRE_EXTENSION=1 \
        "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e .
fi
step "extension has CUDA kernels" "$OUT/extension.log" "$PYTHON" -c "
import sys, fusedrnn._extension as e, fusedrnn.backends as b
print(b.report())
sys.exit(0 if e.has_cuda() else 'fusedrnn._C was built without its CUDA kernels: ' + str(e.load_error()))"

# 2. the gpu tests (a run that collects none exits 5: recorded, and reported as such)
step "gpu tests" "$OUT/gpu-tests.log" "$PYTHON" -m pytest tests -m gpu -q -rs --junitxml="$OUT/gpu-tests.xml"

# 3. compute-sanitizer on small shapes of every GPU backend's kernels
SANITIZER=$(command -v compute-sanitizer || true)
for candidate in "${CUDA_HOME:-}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
    if [ -z "$SANITIZER" ] && [ -x "$candidate" ]; then SANITIZER=$candidate; fi
done
GPU_BACKENDS=$("$PYTHON" -c "
import fusedrnn.backends as b
print(','.join(n for n in b.available() if n != 'reference'))" 2>/dev/null)
if [ -z "$SANITIZER" ]; then
    printf '%s\t%s\t%s\t%s\n' "compute-sanitizer" "127" "0" "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)" >>"$STEPS"
elif [ -z "$GPU_BACKENDS" ]; then
    printf '%s\t%s\t%s\t%s\n' "compute-sanitizer" "1" "0" "no GPU backend is available: nothing to sanitize" >>"$STEPS"
else
    for tool in memcheck racecheck; do
        # no caching allocator: memcheck then sees each tensor's own bounds, not the pool's
        step "compute-sanitizer $tool ($GPU_BACKENDS)" "$OUT/sanitizer-$tool.log" \
            env PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$SANITIZER_TIMEOUT" \
            "$SANITIZER" --tool "$tool" --error-exitcode 99 --target-processes all \
            "$PYTHON" -m fusedrnn.check --device cuda --backends "$GPU_BACKENDS" --dtype float32,bfloat16 \
            --shapes 5,3,3,37 1,2,3,37 --options padded,packed-reverse
    done
fi

# 4. the benchmark (default GPU shapes: the quoted LSTM B=16 T=1024 H=768 and the sweeps)
# shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of arguments
step "benchmark" "$OUT/bench.log" "$PYTHON" -m fusedrnn.bench --device cuda --out "$OUT" ${GPU_CHECK_BENCH_ARGS:-}

# 5. the report
"$PYTHON" - "$OUT" <<'PY'
import glob, json, os, platform, sys, time
import torch

out = sys.argv[1]
steps = []
with open(os.path.join(out, "steps.tsv")) as f:
    for line in f:
        name, rc, seconds, log = line.rstrip("\n").split("\t")
        rc = int(rc)
        status = "passed" if rc == 0 else ("no tests collected" if rc == 5 and name == "gpu tests" else
                                           ("timed out" if rc == 124 else f"FAILED (exit {rc})"))
        steps.append({"step": name, "exit_status": rc, "status": status, "seconds": int(seconds), "log": log})
failed = [s for s in steps if s["status"].startswith(("FAILED", "timed out"))]
bench_md = sorted(glob.glob(os.path.join(out, "bench-cuda-*.md")))
plots = sorted(glob.glob(os.path.join(out, "bench-cuda-*.png")))
report = {
    "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "passed": not failed, "steps": steps,
    "benchmark_markdown": bench_md[-1] if bench_md else None, "plot": plots[-1] if plots else None,
}
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
lines = [f"# fusedrnn gpu-check: {'PASSED' if not failed else 'FAILED'}", "",
         f"{report['gpu']}, torch {report['torch']} (CUDA {report['cuda']}), python {report['python']}, "
         f"{report['timestamp']}", "", "| step | status | seconds | log |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {os.path.basename(s['log'])} |" for s in steps]
if report["plot"]:
    lines += ["", f"![speedup vs torch.nn]({os.path.basename(report['plot'])})"]
if bench_md:
    lines += ["", "## Benchmark", "", open(bench_md[-1]).read()]
with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[:len(steps) + 6]))
print(f"report: {os.path.join(out, 'report.md')}")
sys.exit(1 if failed else 0)
PY
