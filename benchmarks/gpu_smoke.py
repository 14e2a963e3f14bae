#!/usr/bin/env python3
"""``make gpu-smoke``: the most a GPU lent for a few minutes can tell, in under 8 minutes, with a report.

    python benchmarks/gpu_smoke.py          # the smoke run (make gpu-smoke)
    python benchmarks/gpu_smoke.py --full   # the long validation (make gpu-check, benchmarks/gpu_check.sh)

After a look at the card (nvidia-smi, torch, CUDA, Triton), the smoke run's steps:

1. build: ``make build`` (the Makefile's stamps, pip constrained to the installed torch) for the local
   GPU's architecture only (``TORCH_CUDA_ARCH_LIST`` from ``torch.cuda.get_device_capability()``),
   ``MAX_JOBS`` = the CPU count, with pip kept off the network;
2. extension: ``fusedrnn._C`` has its CUDA kernels (``fusedrnn.report()``);
3. cuda kernels: every CUDA kernel once at small shapes (SELECTIONS["cuda kernels"]);
4. triton kernels: every Triton kernel on the GPU, without the interpreter;
5. against torch.nn: cuDNN on the same weights, and the benchmark shape (B=16, H=768);
6. memcheck: ``compute-sanitizer --tool memcheck`` over ``python -m fusedrnn.check`` on the smallest shapes;
7. benchmark: LSTM and GRU at B=16 T=1024 I=H=768, bfloat16 and float32, every GPU backend against
   torch.nn (cuDNN) in the same run (``python -m fusedrnn.bench``, its own correctness check first).

``--full`` runs the build, the extension check, every ``gpu`` and ``triton`` test, memcheck and
racecheck over a larger check grid, and the benchmark's default GPU sweeps, with no overall budget.

Every step runs, whatever the previous ones gave, under its own timeout (``Step.cap_s``, cut so that
the steps after it keep their estimated time and the smoke run stays within SMOKE_BUDGET_S; see
``allot``).  Without a CUDA device every GPU step is reported as skipped, with the reason, and nothing
is built.  The report (report.md, report.json), every step's output (steps.log) and the benchmark's
own files go into ``--out``, else ``$OUT``, else benchmarks/results/gpu-<plan>-<time>/: few files,
because some ways of borrowing a GPU copy back only a handful.

Exit status: 0 every step that ran passed; 1 a step failed or timed out; 3 no CUDA device (the GPU
steps were skipped); 130 interrupted.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent

#: the smoke run's steps together, card included: under 8 minutes with room for the report
#: and for a killed step's grace period
SMOKE_BUDGET_S = 450.0
#: seconds between SIGTERM and SIGKILL for a step past its timeout
KILL_GRACE_S = 5.0
#: a step offered less than this is skipped: it could not do anything useful
MIN_STEP_S = 5.0
#: lines of each step's output in the report and (fewer) on the console
TAIL_LINES = 25
CONSOLE_TAIL_LINES = 6
#: seconds between "still running" lines on the console
HEARTBEAT_S = 30.0
CARD_TIMEOUT_S = 60.0
CARD_PREFIX = "GPU-SMOKE-CARD "
EXIT_FAILED, EXIT_NO_GPU, EXIT_INTERRUPTED = 1, 3, 130
PYTEST_NO_TESTS = 5  # pytest's exit status when the selection is empty
#: variables that would make the GPU steps test something else (the interpreter, the CPU emulation)
CLEARED_ENV = ("TRITON_INTERPRET", "FUSEDRNN_CUDA_EMULATE")


# ----------------------------------------------------------------------------
# What runs: pytest selections, the sanitized check, the benchmark
# ----------------------------------------------------------------------------


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
#: the last line matching one of these is a step's one-line summary in the report
SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.*?)=*$"
                          r"|^(=+ ERROR SUMMARY: .*|fusedrnn check: .*|fusedrnn-bench: .*)$")


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
    return Step("extension", [ctx.python, __file__, "--extension-check"], cap_s, estimate_s, skip=ctx.no_gpu)


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


def allot(step: Step, later: Sequence[Step], remaining: Optional[float]) -> Optional[float]:
    """The step's timeout, or None when too little time is left to start it.

    Without a budget (``remaining`` None) its cap.  Within one: its cap, but no more than leaves every
    later step that will run its estimate (and a kill's grace period); when that is too little (the run
    is behind), the remaining time shared in proportion to the estimates.  Never more than
    ``remaining`` less its own kill's grace period, so a step that hangs costs its timeout and the run
    still ends within the budget.
    """
    if remaining is None:
        return step.cap_s
    remaining -= KILL_GRACE_S
    reserve = sum(s.estimate_s + KILL_GRACE_S for s in later if s.skip is None)
    share = remaining * step.estimate_s / (step.estimate_s + reserve) if step.estimate_s + reserve > 0 else remaining
    timeout = min(step.cap_s, max(remaining - reserve, share))
    return timeout if timeout >= MIN_STEP_S else None


# ----------------------------------------------------------------------------
# Running a step
# ----------------------------------------------------------------------------


@dataclass
class Result:
    """How a step went."""

    step: str
    status: str  # "passed", "skipped: <why>", "FAILED ...", "timed out ..."
    failed: bool
    seconds: float
    timeout_s: Optional[float]
    command: str
    summary: str = ""  # its last summary line (pytest's counts, the sanitizer's error count, ...)
    tail: str = ""


def step_env(step: Step) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # the log in the order things happened
    env.update(step.env)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step's whole process group (pytest's workers, the sanitizer's target, a compiler):
    SIGTERM, SIGKILL after the grace period.  Also called after a normal exit, for stragglers that
    would hold the GPU during the next step."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # nothing left in the group
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)
    proc.wait()


def run_logged(argv: Sequence[str], env: Dict[str, str], log_path: Path, timeout: float,
               label: str) -> Tuple[Optional[int], str]:
    """Run ``argv`` in its own process group, its output appended to ``log_path``.

    Returns (exit status, or None when it was killed at ``timeout``; the output it wrote).
    """
    with open(log_path, "ab") as log:
        offset = log.tell()
        try:
            proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.write(f"cannot start {argv[0]}: {exc}\n".encode())
            rc: Optional[int] = 127
        else:
            rc = _wait(proc, timeout, label)
    with open(log_path, "rb") as f:
        f.seek(offset)
        return rc, f.read().decode(errors="replace")


def _wait(proc: subprocess.Popen, timeout: float, label: str) -> Optional[int]:
    start = time.monotonic()
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                _kill_group(proc)
                return None
            try:
                rc = proc.wait(timeout=min(HEARTBEAT_S, left))
            except subprocess.TimeoutExpired:
                print(f"      ... {label}: {time.monotonic() - start:.0f} s", flush=True)
                continue
            _kill_group(proc)  # stragglers of a finished step
            return rc
    except KeyboardInterrupt:
        _kill_group(proc)
        raise


def classify(step: Step, rc: Optional[int], output: str, timeout: float) -> Tuple[str, bool]:
    """(status, failed) of a step that ran."""
    if rc is None:
        return f"timed out after {timeout:.0f} s", True
    is_pytest = "pytest" in step.argv
    if rc == 0:
        if is_pytest and not re.search(r"\b\d+ passed\b", summary_line(output)):
            # every selected test skipped: on a GPU that says something is wrong, and nothing was shown
            return "FAILED: no test passed (every selected test was skipped)", True
        return "passed", False
    for marker, why in step.unsupported.items():
        if marker in output:
            return f"skipped: {why}", False
    if rc == PYTEST_NO_TESTS and is_pytest:
        return "FAILED: no tests collected (the selection matches nothing, or its modules skipped themselves)", True
    return f"FAILED (exit status {rc})", True


def summary_line(output: str) -> str:
    for line in reversed(output.splitlines()):
        m = SUMMARY_LINE.match(line.strip())
        if m:
            return (m.group(1) or m.group(3)).strip("= ")
    return ""


def tail(output: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


class Runner:
    """Runs steps in order under one clock and budget, logging to ``out/steps.log``."""

    def __init__(self, out: Path, budget_s: Optional[float]):
        self.out, self.budget_s = out, budget_s
        self.log = out / "steps.log"
        self.log.write_bytes(b"")
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> Optional[float]:
        return None if self.budget_s is None else self.budget_s - self.elapsed()

    def _header(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"\n==== {text}\n")

    def run(self, step: Step, timeout: float) -> Tuple[Optional[int], str]:
        self._header(f"{step.name} (timeout {timeout:.0f} s): {step.command()}")
        return run_logged(step.argv, step_env(step), self.log, timeout, step.name)

    def step(self, number: int, steps: Sequence[Step]) -> Result:
        step = steps[number - 1]
        where = f"[{number}/{len(steps)} | {self.elapsed():.0f} s]"
        timeout = None if step.skip else allot(step, steps[number:], self.remaining())
        if step.skip or timeout is None:
            why = step.skip or (f"the {self.budget_s:.0f} s budget is spent ({self.elapsed():.0f} s elapsed)")
            self._header(f"{step.name}: skipped: {why}")
            print(f"{where} {step.name}: skipped: {why}", flush=True)
            return Result(step.name, f"skipped: {why}", False, 0.0, None, step.command())
        print(f"{where} {step.name} (timeout {timeout:.0f} s): {step.command()}", flush=True)
        start = time.monotonic()
        rc, output = self.run(step, timeout)
        seconds = time.monotonic() - start
        status, failed = classify(step, rc, output, timeout)
        result = Result(step.name, status, failed, round(seconds, 1), round(timeout), step.command(),
                        summary_line(output), tail(output))
        print(f"{where} {step.name}: {status} in {seconds:.0f} s" + (f" ({result.summary})" if result.summary else ""))
        for line in tail(output, CONSOLE_TAIL_LINES).splitlines():
            print(f"      {line}")
        sys.stdout.flush()
        return result


# ----------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------


def nvidia_smi() -> dict:
    """name, driver and memory from nvidia-smi (or why not)."""
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not found"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi failed: {exc}"}
    if out.returncode != 0:
        return {"error": f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:300]}"}
    name, driver, memory = (part.strip() for part in (out.stdout.splitlines()[0].split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "memory": memory}


def read_card() -> dict:
    """The card, torch and the extension as this interpreter sees them (run in a subprocess: --card-json)."""
    card: dict = {"nvidia_smi": nvidia_smi()}
    try:
        import torch
    except Exception as exc:  # no torch, or a broken CUDA library under it
        card["no_gpu"] = f"torch cannot be imported ({type(exc).__name__}: {exc})"
        return card
    from fusedrnn import _extension
    from fusedrnn.bench import env as bench_env

    card["versions"] = bench_env.versions()
    card["extension"] = {"loaded": _extension.load() is not None, "has_cuda": _extension.has_cuda(),
                         "error": _extension.load_error()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        card["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "multiprocessors": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
    else:
        card["no_gpu"] = "torch.cuda.is_available() is False" + (
            f" (this torch, {torch.__version__}, has no CUDA)" if torch.version.cuda is None else "")
    return card


def card_title(card: dict) -> str:
    """The card in one line, as a RESULTS.md heading names it."""
    gpu, smi = card.get("gpu"), card.get("nvidia_smi", {})
    if not gpu:
        return "no CUDA device"
    driver = f", driver {smi['driver']}" if smi.get("driver") else ""
    return f"{gpu['name']} ({gpu['memory_gib']} GiB, compute capability {gpu['capability']}, " \
           f"{gpu['multiprocessors']} SMs{driver})"


def nvidia_smi_line(card: dict) -> str:
    smi = card.get("nvidia_smi", {})
    if "name" not in smi:
        return f"nvidia-smi: {smi.get('error', 'not run')}"
    return f"nvidia-smi: {smi['name']}, {smi['memory']}, driver {smi['driver']}"


def extension_line(card: dict) -> str:
    ext = card.get("extension")
    if not ext:
        return "fusedrnn._C: not looked at"
    if not ext["loaded"]:
        return f"fusedrnn._C before the build: not loadable ({ext['error']})"
    return f"fusedrnn._C before the build: loaded, {'with' if ext['has_cuda'] else 'without'} its CUDA kernels"


def versions_line(card: dict) -> str:
    v = card.get("versions", {})
    return (f"torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}), Triton {v.get('triton')}, "
            f"Python {v.get('python')}, fusedrnn {v.get('git_commit')}")


def card_step(runner: Runner, python: str) -> Tuple[dict, Optional[Result]]:
    """The card, read in a subprocess under its own timeout; a Result only when that failed."""
    step = Step("card", [python, __file__, "--card-json"], CARD_TIMEOUT_S)
    print(f"[card | {runner.elapsed():.0f} s] {step.command()}", flush=True)
    rc, output = runner.run(step, CARD_TIMEOUT_S)
    for line in reversed(output.splitlines()):
        if line.startswith(CARD_PREFIX):
            return json.loads(line[len(CARD_PREFIX):]), None
    status, _ = classify(step, rc, output, CARD_TIMEOUT_S)
    return ({"no_gpu": f"the card could not be read ({status})"},
            Result("card", status, True, 0.0, CARD_TIMEOUT_S, step.command(), "", tail(output)))


# ----------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------


def verdict(results: Sequence[Result], ctx: Context) -> Tuple[str, int]:
    if any(r.failed for r in results):
        return "FAILED", EXIT_FAILED
    if ctx.no_gpu:
        return "NO GPU: nothing was checked", EXIT_NO_GPU
    return "PASSED", 0


def newest(out: Path, pattern: str, since: float) -> Optional[Path]:
    found = sorted((p for p in glob.glob(str(out / pattern)) if os.path.getmtime(p) >= since), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def report_markdown(plan: str, ctx: Context, results: Sequence[Result], budget_s: Optional[float],
                    seconds: float, when: str) -> str:
    word, _ = verdict(results, ctx)
    budget = f" of a {budget_s:.0f} s budget" if budget_s else ""
    lines = [f"# fusedrnn {plan}: {word}", "",
             f"## GPU: {card_title(ctx.card)}: make {plan}, {when}", "",
             f"- {nvidia_smi_line(ctx.card)}",
             f"- {versions_line(ctx.card)}",
             f"- {extension_line(ctx.card)}", ""]
    if ctx.no_gpu:
        lines += [f"**{ctx.no_gpu}**", ""]
    lines += [f"Total {seconds:.0f} s{budget}.  Every step's whole output: steps.log.", "",
              "| # | step | status | seconds | timeout | summary |", "|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r.step} | {r.status} | {r.seconds:.0f} | {r.timeout_s if r.timeout_s is not None else '-'} "
              f"| {r.summary} |" for i, r in enumerate(results, 1)]
    for i, r in enumerate(results, 1):
        lines += ["", f"### {i}. {r.step}: {r.status}", "", f"`{r.command}`"]
        if r.tail:
            lines += ["", "```", r.tail, "```"]
    bench_md = newest(ctx.out, "bench-cuda-*.md", ctx.started)
    if bench_md:
        lines += ["", "## Benchmark", "", bench_md.read_text()]
    return "\n".join(lines) + "\n"


def write_report(plan: str, ctx: Context, results: Sequence[Result], budget_s: Optional[float],
                 seconds: float) -> Path:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    word, status = verdict(results, ctx)
    path = ctx.out / "report.md"
    path.write_text(report_markdown(plan, ctx, results, budget_s, seconds, when))
    payload = {"plan": plan, "timestamp": when, "verdict": word, "exit_status": status, "seconds": round(seconds, 1),
               "budget_s": budget_s, "card": ctx.card, "steps": [asdict(r) for r in results]}
    (ctx.out / "report.json").write_text(json.dumps(payload, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------


def extension_check() -> int:
    """--extension-check: the backends' report; non-zero when fusedrnn._C lacks its CUDA kernels."""
    from fusedrnn import _extension, backends

    print(backends.report())
    if _extension.has_cuda():
        return 0
    print(f"fusedrnn._C was built without its CUDA kernels: {_extension.load_error() or 'built_with_cuda() is False'}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the long validation of make gpu-check")
    parser.add_argument("--out", default=None, help="report folder (default: $OUT, else benchmarks/results/...)")
    parser.add_argument("--skip-build", action="store_true", help="use the installed build")
    parser.add_argument("--bench-args", default="", help="--full: extra benchmark arguments, one string")
    parser.add_argument("--sanitizer-timeout", type=float, default=900.0,
                        help="--full: seconds per compute-sanitizer run (default 900)")
    parser.add_argument("--card-json", action="store_true", help=argparse.SUPPRESS)  # the card step's subprocess
    parser.add_argument("--extension-check", action="store_true", help=argparse.SUPPRESS)
    return parser


def output_folder(args: argparse.Namespace, plan: str) -> Path:
    chosen = args.out or os.environ.get("OUT") or str(
        REPO / "benchmarks" / "results" / f"{plan}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = Path(chosen).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # the subprocess modes import fusedrnn: from this checkout, which before the build is not installed
    # (``python benchmarks/gpu_smoke.py`` puts benchmarks/, not the checkout, on sys.path)
    sys.path.insert(0, str(REPO))
    if args.card_json:
        print(CARD_PREFIX + json.dumps(read_card()))
        return 0
    if args.extension_check:
        return extension_check()
    plan = "gpu-check" if args.full else "gpu-smoke"
    budget_s = None if args.full else SMOKE_BUDGET_S
    out = output_folder(args, plan)
    runner = Runner(out, budget_s)
    print(f"{plan}: report in {out}" + (f", budget {budget_s:.0f} s" if budget_s else ""), flush=True)
    card, card_failure = card_step(runner, sys.executable)
    ctx = Context(sys.executable, out, card)
    print(f"{plan}: {card_title(card)}; {versions_line(card)}" + (f"; {ctx.no_gpu}" if ctx.no_gpu else ""),
          flush=True)
    steps = (full_plan if args.full else smoke_plan)(ctx, args)
    results = [card_failure] if card_failure else []
    number = 1
    try:
        for number in range(1, len(steps) + 1):
            results.append(runner.step(number, steps))
            write_report(plan, ctx, results, budget_s, runner.elapsed())  # a report even if the run is killed
    except KeyboardInterrupt:
        results.append(Result(steps[number - 1].name, "interrupted", True, 0.0, None, steps[number - 1].command()))
        write_report(plan, ctx, results, budget_s, runner.elapsed())
        print(f"{plan}: interrupted; report: {out / 'report.md'}")
        return EXIT_INTERRUPTED
    path = write_report(plan, ctx, results, budget_s, runner.elapsed())
    word, status = verdict(results, ctx)
    print(f"{plan}: {word} in {runner.elapsed():.0f} s; report: {path}")
    for r in results:
        print(f"  {r.step:<18} {r.status}" + (f" ({r.summary})" if r.summary else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
