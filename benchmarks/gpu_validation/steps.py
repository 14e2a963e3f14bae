"""What the GPU run runs: pytest selections, the sanitized check and the benchmark, as steps; the two plans."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import REPO, SCRIPT

#: the smoke run's steps together, card included: under 8 minutes with room for the report
#: and for a killed step's grace period
SMOKE_BUDGET_S = 450.0


@dataclass(frozen=True)
class Selection:
    """Tests by path, marker expression (``-m``) and keyword expression (``-k``)."""

    paths: Tuple[str, ...]
    marker: str
    keyword: Optional[str] = None

    def args(self) -> List[str]:
        return [*self.paths, "-m", self.marker] + (["-k", self.keyword] if self.keyword else [])


#: the smoke run's tests (tests/test_gpu_smoke.py checks that each selects what its comment says)
SELECTIONS: Dict[str, Selection] = {
    # every cell variant (LSTM, peephole, projection, GRU both modes, RNN tanh/relu) x float32, float16,
    # bfloat16 x per_step and persistent, packed and reversed with biases, at odd sizes (scalar
    # kernels) and aligned ones (the 16-byte vector path); bitwise repeats (races); the strategy rule
    # and argument errors on the device
    "cuda kernels": Selection(
        ("tests/test_cuda_backend.py",), "gpu",
        "(match_reference and packed-reverse-bias and (odd or aligned)) or repeated_runs or strategy_rule"
        " or forced_persistent or bad_arguments"),
    # the forward kernels (per_step, persistent, grid_sync) for every variant, the backward for every
    # variant in float32, bfloat16 (persistent forward) and float16 (per-step forward), CUDA graphs
    "triton kernels": Selection(
        ("tests/triton/test_triton_backend.py",), "triton or gpu",
        "(forward_matches_reference and T7-packed-reverse) or (gradients_float32 and packed-reverse-T7)"
        " or lstm-bfloat16-packed-reverse or lstm-proj-float16-padded or cuda_graph_replay"),
    # cuDNN on the same weights (every cell, dtype, padded and packed), the benchmark's B=16 H=768 on
    # both strategies, whole modules against torch.nn on the GPU
    "against torch.nn": Selection(
        ("tests/test_cuda_backend.py", "tests/test_modules.py"), "gpu",
        "matches_cudnn or benchmark_shape or module_matches_torch_nn or parity"),
}
#: make gpu-check: everything that needs a GPU, the Triton kernel tests on it included
FULL_SELECTION = Selection(("tests",), "gpu or triton")

GPU_BACKENDS = "cuda,triton"
#: python -m fusedrnn.check on the smallest shapes (T=5 runs the persistent forward, T=1 the per-step
#: one; the backward always runs per step): every kernel of both GPU backends, forward and backward
SANITIZED_CHECK = ["-m", "fusedrnn.check", "--device", "cuda", "--backends", GPU_BACKENDS,
                   "--dtype", "float32,bfloat16", "--shapes", "5,3,3,37", "1,2,3,37"]
SMOKE_SANITIZED_OPTIONS = "packed-reverse"
FULL_SANITIZED_OPTIONS = "padded,packed-reverse"
#: the headline: LSTM and GRU at B=16 T=1024 I=H=768 (fusedrnn/bench/shapes.py's "flashrnn" preset) in bfloat16 and
#: float32; the backends are the benchmark's default, every available GPU backend, each against torch.nn
HEADLINE_BENCH = ["--cell", "lstm,gru", "--shapes", "flashrnn", "--dtype", "bfloat16,float32"]
#: output markers of a tool that cannot run on this machine: the step is a skip, not a failure
SANITIZER_UNSUPPORTED = {"Device not supported": "compute-sanitizer does not support this device here "
                                                 "('Device not supported': some virtualised machines)"}


def find_compute_sanitizer() -> Optional[str]:
    """compute-sanitizer on PATH, under $CUDA_HOME/bin or /usr/local/cuda/bin, else None."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = os.path.join(home, "bin", "compute-sanitizer") if home else None
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def usable_cpus() -> int:
    """What ``nproc`` says: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def xdist_args() -> List[str]:
    """pytest-xdist's workers where it is installed: Triton compiles and the float64 references in parallel."""
    return ["-n", "4"] if importlib.util.find_spec("xdist") is not None else []


def per_test_timeout_args(seconds: float) -> List[str]:
    """pytest-timeout where it is installed: a kernel that never returns (a grid barrier waiting for a
    program that is not resident, a flag never seen) fails its own test, not the whole step.  The
    thread method ends the process, which also works while it waits inside a CUDA call; under xdist
    only that worker ends, and a new one runs the remaining tests."""
    if importlib.util.find_spec("pytest_timeout") is None:
        return []
    return ["--timeout", str(int(seconds)), "--timeout-method", "thread"]



# ----------------------------------------------------------------------------
# Steps and plans
# ----------------------------------------------------------------------------


@dataclass
class Step:
    """One command of a plan."""

    name: str
    argv: List[str]
    cap_s: float  # its own timeout
    estimate_s: float = 0.0  # typical seconds on an H100/H200: what the budget keeps for it
    env: Dict[str, str] = field(default_factory=dict)
    skip: Optional[str] = None  # why it does not run here
    unsupported: Dict[str, str] = field(default_factory=dict)  # output marker -> skip reason, on failure

    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in [*(f"{k}={v}" for k, v in self.env.items()), *self.argv])


@dataclass
class Context:
    """What the plans depend on: the interpreter, the output folder and the card."""

    python: str
    out: Path
    card: dict
    started: float = field(default_factory=time.time)  # files in ``out`` older than this are another run's

    @property
    def no_gpu(self) -> Optional[str]:
        """Why the GPU steps cannot run (None when a CUDA device is there)."""
        if self.card.get("gpu"):
            return None
        return "no CUDA device: " + self.card.get("no_gpu", "the card could not be read")

    def arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST: as set, else the local GPU's compute capability."""
        return os.environ.get("TORCH_CUDA_ARCH_LIST") or self.card.get("gpu", {}).get("capability", "")


def build_step(ctx: Context, skip_build: bool, estimate_s: float, cap_s: float) -> Step:
    """``make build`` for this GPU only, in parallel, pip kept off the network (no index, no version check)."""
    ext = ctx.card.get("extension", {})
    # on a GPU, a loadable extension without its CUDA kernels (built before nvcc was found, or with
    # FUSEDRNN_NO_CUDA=1): the stamps would call it up to date
    force = ["REBUILD=FORCE"] if not ctx.no_gpu and ext.get("loaded") and not ext.get("has_cuda") else []
    env = {"TORCH_CUDA_ARCH_LIST": ctx.arch(), "MAX_JOBS": os.environ.get("MAX_JOBS", str(usable_cpus())),
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    skip = ctx.no_gpu and f"{ctx.no_gpu} (the extension is built for the local GPU only; this tree is left as it is)"
    if skip_build and not skip:
        skip = "--skip-build: the installed build is used"
    return Step("build", ["make", "-C", str(REPO), "build", f"PYTHON={ctx.python}", *force], cap_s, estimate_s,
                env, skip)


def extension_step(ctx: Context, estimate_s: float = 5.0, cap_s: float = 60.0) -> Step:
    return Step("extension", [ctx.python, str(SCRIPT), "--extension-check"], cap_s, estimate_s, skip=ctx.no_gpu)


def pytest_step(ctx: Context, name: str, selection: Selection, estimate_s: float, cap_s: float,
                per_test_s: float) -> Step:
    argv = [ctx.python, "-m", "pytest", *selection.args(), "-q", *xdist_args(), *per_test_timeout_args(per_test_s)]
    return Step(name, argv, cap_s, estimate_s, skip=ctx.no_gpu)


def sanitizer_step(ctx: Context, tool: str, options: str, estimate_s: float, cap_s: float) -> Step:
    sanitizer = find_compute_sanitizer()
    skip = ctx.no_gpu or (None if sanitizer else
                          "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    argv = [sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode", "99", "--target-processes", "all",
            ctx.python, *SANITIZED_CHECK, "--options", options]
    # no caching allocator: memcheck then sees each tensor's own bounds, not the pool's
    return Step(tool, argv, cap_s, estimate_s, {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, skip, SANITIZER_UNSUPPORTED)


def bench_step(ctx: Context, bench_args: Sequence[str], estimate_s: float, cap_s: float) -> Step:
    argv = [ctx.python, "-m", "fusedrnn.bench", "--device", "cuda", *bench_args, "--out", str(ctx.out)]
    return Step("benchmark", argv, cap_s, estimate_s, skip=ctx.no_gpu)


def smoke_plan(ctx: Context, args: argparse.Namespace) -> List[Step]:
    """Estimates: guesses for an H100/H200 until a report measures them (sum 350 s of SMOKE_BUDGET_S)."""
    return [
        build_step(ctx, args.skip_build, estimate_s=100, cap_s=240),
        extension_step(ctx),
        # one test of these takes seconds; the first Triton one of a worker compiles and tunes its kernels
        pytest_step(ctx, "cuda kernels", SELECTIONS["cuda kernels"], estimate_s=30, cap_s=120, per_test_s=60),
        pytest_step(ctx, "triton kernels", SELECTIONS["triton kernels"], estimate_s=45, cap_s=150, per_test_s=60),
        pytest_step(ctx, "against torch.nn", SELECTIONS["against torch.nn"], estimate_s=25, cap_s=90, per_test_s=60),
        sanitizer_step(ctx, "memcheck", SMOKE_SANITIZED_OPTIONS, estimate_s=45, cap_s=150),
        bench_step(ctx, HEADLINE_BENCH, estimate_s=100, cap_s=180),
    ]


def full_plan(ctx: Context, args: argparse.Namespace) -> List[Step]:
    """make gpu-check: no overall budget, each step's own timeout only."""
    return [
        build_step(ctx, args.skip_build, estimate_s=0, cap_s=1800),
        extension_step(ctx),
        pytest_step(ctx, "gpu tests", FULL_SELECTION, estimate_s=0, cap_s=3600, per_test_s=600),
        *(sanitizer_step(ctx, tool, FULL_SANITIZED_OPTIONS, estimate_s=0, cap_s=args.sanitizer_timeout)
          for tool in ("memcheck", "racecheck")),
        bench_step(ctx, shlex.split(args.bench_args), estimate_s=0, cap_s=3600),
    ]
