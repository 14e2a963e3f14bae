"""``make gpu-smoke`` (benchmarks/gpu_smoke.py) as far as a machine without a GPU can check it.

* The script itself, with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``, so this holds on a GPU machine
  too): every GPU step is reported as skipped with the reason, nothing is built, the report lists every
  step, the exit status says that no GPU was there; the same for ``benchmarks/gpu_check.sh``.
* Its pytest selections: each selects tests (``pytest --collect-only``), together they cover every
  kernel, strategy and dtype they claim to, and each is part of ``make gpu-check``'s.
* Its command lines parse with the commands they call (fusedrnn.bench, fusedrnn.check).
* Its runner, on stand-in commands: a failing step does not stop the next, a step past its timeout
  is killed with its children, and the budget keeps the smoke run under 8 minutes when a step hangs.

The subprocesses start together when the module's first test asks for them (they overlap on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn.bench import check, cli

from test_cuda_backend import GRID, NN_CELLS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_smoke.py"

sys.path.insert(0, str(SCRIPT.parent))  # the script (its command line) and its parts, benchmarks/gpu_validation/
import gpu_smoke as gs  # noqa: E402
from gpu_validation import card as smoke_card  # noqa: E402
from gpu_validation import report as smoke_report  # noqa: E402
from gpu_validation import runner as smoke_runner  # noqa: E402
from gpu_validation import steps as smoke_steps  # noqa: E402

#: the GPU hidden from torch: the script's "no GPU" mode, on any machine
NO_GPU_ENV = {**{k: v for k, v in os.environ.items() if k != "OUT"}, "CUDA_VISIBLE_DEVICES": ""}
#: collection only: the Triton test modules skip themselves where there is neither a GPU nor the interpreter
COLLECT_ENV = {**os.environ, "TRITON_INTERPRET": "1"}
GPU_CARD = {"gpu": {"name": "Stand-in", "capability": "9.0", "multiprocessors": 132, "memory_gib": 139.8},
            "extension": {"loaded": False, "has_cuda": False, "error": "not built"}}


#: the card step as on a fresh GPU machine, where the build has not installed fusedrnn yet: ``-S`` leaves
#: out the site .pth files (the editable install's finder), the site-packages folders give back torch,
#: and the working folder (the checkout) is not on the path
CARD_WITHOUT_INSTALL = f"""
import importlib.util, runpy, sys
sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})] + {site.getsitepackages()!r}
if importlib.util.find_spec("fusedrnn") is not None:
    print("FUSEDRNN-INSTALLED")
    sys.exit()
sys.argv = ["gpu_smoke.py", "--card-json"]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


class Background:
    """Subprocesses started at once, each awaited by the test that needs it."""

    def __init__(self, commands):
        self._procs = {name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)
                       for name, (argv, env) in commands.items()}
        self._done = {}

    def __getitem__(self, name) -> subprocess.CompletedProcess:
        if name not in self._done:
            proc = self._procs[name]
            output, _ = proc.communicate(timeout=300)
            self._done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, output)
        return self._done[name]

    def close(self):
        """Ends what a failed test left unawaited."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def collect_command(selection):
    return [sys.executable, "-m", "pytest", *selection.args(), "--collect-only", "-q", "-p", "no:cacheprovider"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-smoke")
    commands = {f"collect {name}": (collect_command(sel), COLLECT_ENV) for name, sel in smoke_steps.SELECTIONS.items()}
    commands["smoke"] = ([sys.executable, str(SCRIPT), "--out", str(out / "smoke")], NO_GPU_ENV)
    commands["card before install"] = ([sys.executable, "-S", "-c", CARD_WITHOUT_INSTALL], NO_GPU_ENV)
    background = Background(commands)
    background.out = out
    yield background
    background.close()


def collected(runs, name):
    proc = runs[f"collect {name}"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    ids = [line.strip() for line in proc.stdout.splitlines() if line.startswith("tests/") and "::" in line]
    assert ids, f"the {name!r} selection collects no test:\n{proc.stdout[-3000:]}"
    return ids


def plan_names(plan):
    return [s.name for s in plan(smoke_steps.Context(sys.executable, Path("."), {}), argparse.Namespace(
        skip_build=False, bench_args="", sanitizer_timeout=900.0))]


# ----------------------------------------------------------------------------
# The script without a GPU
# ----------------------------------------------------------------------------


def test_without_a_gpu_every_gpu_step_is_skipped_with_its_reason(runs):
    proc = runs["smoke"]
    assert proc.returncode == smoke_report.EXIT_NO_GPU, proc.stdout
    report = json.loads((runs.out / "smoke" / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == plan_names(smoke_steps.smoke_plan), "the report lists every step of the plan, in order"
    for name, step in steps.items():
        assert step["status"].startswith("skipped: no CUDA device: torch.cuda.is_available() is False"), name
        assert not step["failed"] and step["command"], name
    # the build is skipped (this tree is not rebuilt) and says why
    assert "this tree is left as it is" in steps["build"]["status"]
    markdown = (runs.out / "smoke" / "report.md").read_text()
    assert markdown.startswith("# fusedrnn gpu-smoke: NO GPU") and "## GPU: no CUDA device" in markdown
    assert all(f"| {name} | skipped: no CUDA device" in markdown for name in steps)
    assert "torch " + torch.__version__ in markdown, "the card names the versions"
    assert smoke_card.CARD_PREFIX in (runs.out / "smoke" / "steps.log").read_text(), "the raw log holds the card step"


def test_the_card_is_read_before_fusedrnn_is_installed(runs):
    """On a fresh GPU machine the card step runs before the build installs fusedrnn: the script
    imports it from the checkout."""
    proc = runs["card before install"]
    if "FUSEDRNN-INSTALLED" in proc.stdout:
        pytest.skip("fusedrnn is installed as a regular package here: the fresh machine cannot be imitated")
    assert proc.returncode == 0, proc.stdout[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith(smoke_card.CARD_PREFIX))
    card = json.loads(line[len(smoke_card.CARD_PREFIX):])
    assert card["versions"]["torch"] == torch.__version__ and "extension" in card


def test_gpu_check_runs_the_full_plan_with_its_settings(tmp_path):
    """benchmarks/gpu_check.sh hands its environment to the script's full plan (the interpreter
    replaced by a stand-in that prints its arguments)."""
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stand_in), "GPU_CHECK_SKIP_BUILD": "1", "GPU_CHECK_SANITIZER_TIMEOUT": "60",
           "GPU_CHECK_BENCH_ARGS": "--shapes flashrnn --min-time 0.5"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    script, *argv = json.loads(proc.stdout)
    assert script == "benchmarks/gpu_smoke.py"
    args = gs.build_parser().parse_args(argv)
    assert args.full and args.skip_build and args.sanitizer_timeout == 60
    assert args.bench_args == "--shapes flashrnn --min-time 0.5"
    assert plan_names(smoke_steps.full_plan) == ["build", "extension", "gpu tests", "memcheck", "racecheck",
                                                 "benchmark"]


# ----------------------------------------------------------------------------
# The pytest selections
# ----------------------------------------------------------------------------

CUDA_ID = re.compile(r"match_reference\[gpu-(?P<case>.+)-(?P<size>odd|aligned|T1)-(?P<dtype>f32|f16|bf16)"
                     r"-(?P<strategy>per_step|persistent)\]")


def cuda_variant(case_id: str) -> str:
    """The cell and its options (peephole, projection), without the layout and bias flags."""
    return re.sub(r"-(packed|reverse|bias)", "", case_id)


def parse_cuda_ids(ids):
    """(variant, size, dtype, strategy) of each reference-grid test id."""
    matches = [CUDA_ID.search(i) for i in ids]
    unknown = [i for i, m in zip(ids, matches) if m is None]
    assert not unknown, f"test ids in a format this test does not know (update CUDA_ID): {unknown[:3]}"
    return [(cuda_variant(m["case"]), m["size"], m["dtype"], m["strategy"]) for m in matches]


def test_cuda_selection_covers_every_variant_dtype_and_strategy(runs):
    """Every (cell variant, dtype, strategy) of the full reference grid, at both the scalar and the
    vector sizes, and the bitwise repeats of both strategies."""
    ids = collected(runs, "cuda kernels")
    everything = {(variant, dtype, strategy)
                  for variant, _, dtype, strategy in parse_cuda_ids([f"match_reference[gpu-{p.id}]" for p in GRID])}
    chosen = parse_cuda_ids([i for i in ids if "match_reference" in i])
    assert {(variant, dtype, strategy) for variant, _, dtype, strategy in chosen} == everything
    assert {size for _, size, _, _ in chosen} == {"odd", "aligned"}
    assert {s for s in ("per_step", "persistent") if any("repeated_runs" in i and s in i for i in ids)} == \
        {"per_step", "persistent"}


def test_triton_selection_covers_every_kernel_strategy_and_dtype(runs):
    ids = collected(runs, "triton kernels")
    forward = [i for i in ids if "forward_matches_reference" in i]
    for variant in ft.kernel_variants():
        spec = ft.VARIANTS[variant]
        strategies = ["per_step"] + ([] if spec.projection else ["persistent", "grid_sync"])
        for strategy in strategies:
            assert any(f"[{variant}-T7" in i and strategy in i for i in forward), (variant, strategy)
        assert any(f"gradients_float32[{variant}-" in i for i in ids), f"backward kernel, {variant}"
    low = {m.group(1) for i in ids for m in [re.search(r"gradients_low_precision\[.*?-(b?float16)-", i)] if m}
    assert low == {"bfloat16", "float16"}


def test_torch_nn_selection_covers_cudnn_for_every_cell_and_the_benchmark_shape(runs):
    ids = collected(runs, "against torch.nn")
    for family, mode, _, _ in NN_CELLS:
        for dtype in ("f32", "f16", "bf16"):
            assert any(f"matches_cudnn[{family}-{mode}-" in i and i.endswith(f"-{dtype}]") for i in ids), \
                (family, mode, dtype)
    assert {f for f in ("lstm", "gru") if any(f"benchmark_shape_both_strategies[gpu-{f}-" in i for i in ids)} == \
        {"lstm", "gru"}


def admits(marker_expression: str, marks) -> bool:
    """Whether ``pytest -m marker_expression`` runs a test with ``marks`` (and, or, not, parentheses:
    Python's own reading of them)."""
    return eval(marker_expression, {"__builtins__": {}}, {m: m in marks for m in ("gpu", "triton", "slow")})


@pytest.mark.parametrize("name", list(smoke_steps.SELECTIONS))
def test_the_smoke_selections_are_part_of_gpu_check(name):
    """make gpu-check is the long version: it runs every test the smoke run does (files under its
    paths, markers its expression admits)."""
    selection, full = smoke_steps.SELECTIONS[name], smoke_steps.FULL_SELECTION
    assert all(p.startswith(full.paths) for p in selection.paths)
    for marks in ({"gpu"}, {"triton"}, {"gpu", "triton"}, {"gpu", "slow"}, {"triton", "slow"}, set(), {"slow"}):
        assert not admits(selection.marker, marks) or admits(full.marker, marks), marks


# ----------------------------------------------------------------------------
# The commands
# ----------------------------------------------------------------------------


def gpu_context(tmp_path):
    return smoke_steps.Context(sys.executable, tmp_path, GPU_CARD)


def test_build_is_for_the_local_gpu_only_and_stays_off_the_network(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("MAX_JOBS", raising=False)
    step = smoke_steps.build_step(gpu_context(tmp_path), skip_build=False, estimate_s=1, cap_s=2)
    assert step.skip is None
    assert step.argv[:4] == ["make", "-C", str(REPO), "build"] and f"PYTHON={sys.executable}" in step.argv
    assert step.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and step.env["MAX_JOBS"] == str(len(os.sched_getaffinity(0)))
    assert step.env["PIP_NO_INDEX"] == "1" and "REBUILD=FORCE" not in step.argv
    # an extension that loads without its CUDA kernels is rebuilt whatever the stamps say
    card = {**GPU_CARD, "extension": {"loaded": True, "has_cuda": False, "error": None}}
    step = smoke_steps.build_step(smoke_steps.Context(sys.executable, tmp_path, card), False, 1, 2)
    assert "REBUILD=FORCE" in step.argv


def test_tests_run_in_parallel_and_each_under_a_time_limit_where_the_plugins_are(tmp_path, monkeypatch):
    selection = smoke_steps.SELECTIONS["cuda kernels"]
    monkeypatch.setattr(smoke_steps.importlib.util, "find_spec", lambda name: object())  # xdist, pytest-timeout there
    argv = smoke_steps.pytest_step(gpu_context(tmp_path), "t", selection, 1, 2, per_test_s=60).argv
    assert argv[argv.index("-n") + 1] == "4" and argv[argv.index("--timeout") + 1] == "60"
    assert argv[argv.index("--timeout-method") + 1] == "thread", "ends a process stuck inside a CUDA call"
    monkeypatch.setattr(smoke_steps.importlib.util, "find_spec", lambda name: None)
    argv = smoke_steps.pytest_step(gpu_context(tmp_path), "t", selection, 1, 2, per_test_s=60).argv
    assert "-n" not in argv and "--timeout" not in argv


def test_benchmark_step_times_the_headline_shapes(tmp_path):
    step = smoke_steps.bench_step(gpu_context(tmp_path), smoke_steps.HEADLINE_BENCH, estimate_s=1, cap_s=2)
    assert step.argv[1:3] == ["-m", "fusedrnn.bench"]
    args = cli.build_parser().parse_args(step.argv[3:])
    settings = cli.Settings.from_args(args, step.argv[3:])
    assert settings.device.type == "cuda" and settings.families == ["lstm", "gru"]
    assert settings.shapes == [ft.Shape(T=1024, B=16, I=768, H=768)]
    assert [str(d) for d in settings.dtypes] == ["torch.bfloat16", "torch.float32"]
    assert args.backends is None, "every available GPU backend, each against torch.nn in the same run"
    assert "cpu" not in cli.choose_backends(None, torch.device("cuda"), quick=False), "GPU backends only"
    assert args.out == str(tmp_path)


def test_sanitizer_runs_the_check_on_the_smallest_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(smoke_steps, "find_compute_sanitizer", lambda: "/opt/cuda/bin/compute-sanitizer")
    step = smoke_steps.sanitizer_step(gpu_context(tmp_path), "memcheck", smoke_steps.SMOKE_SANITIZED_OPTIONS, 1, 2)
    assert step.skip is None and step.argv[:3] == ["/opt/cuda/bin/compute-sanitizer", "--tool", "memcheck"]
    check_args = step.argv[step.argv.index("fusedrnn.check") + 1:]
    args = check.build_parser().parse_args(check_args)
    assert args.backends == ["cuda", "triton"] and max(s.T for s in args.shapes) <= 5
    monkeypatch.setattr(smoke_steps, "find_compute_sanitizer", lambda: None)
    step = smoke_steps.sanitizer_step(gpu_context(tmp_path), "memcheck", "padded", 1, 2)
    assert "compute-sanitizer not found" in step.skip


# ----------------------------------------------------------------------------
# The runner on stand-in commands
# ----------------------------------------------------------------------------


def python_step(name, code, cap_s=60.0):
    return smoke_steps.Step(name, [sys.executable, "-c", code], cap_s)


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()  # a zombie has ended; only its parent's wait is missing
    except FileNotFoundError:
        return True


def test_a_failing_step_does_not_stop_the_next_and_a_hanging_one_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    hang = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    steps = [python_step("fails", "raise SystemExit(3)"), python_step("passes", "print('5 passed in 0.1s')"),
             python_step("hangs", hang, cap_s=1.5), python_step("after", "print('still ran')")]
    runner = smoke_runner.Runner(tmp_path, budget_s=None)
    start = time.monotonic()
    results = [runner.step(n, steps) for n in range(1, len(steps) + 1)]
    assert time.monotonic() - start < 30
    assert [(r.status, r.failed) for r in results] == [
        ("FAILED (exit status 3)", True), ("passed", False), ("timed out after 2 s", True), ("passed", False)]
    assert results[1].summary == "5 passed in 0.1s" and results[3].tail == "still ran"
    deadline = time.monotonic() + 5
    while not process_gone(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(int(pid_file.read_text())), "the hanging step's child outlived its timeout"
    assert "still ran" in (tmp_path / "steps.log").read_text()


def test_outcomes_are_classified_from_exit_status_and_output():
    pytest_step = smoke_steps.Step("tests", ["python", "-m", "pytest"], 10)
    assert smoke_runner.classify(pytest_step, 0, "3 passed, 1 skipped in 2s", 10) == ("passed", False)
    assert smoke_runner.classify(pytest_step, 0, "4 skipped in 2s", 10)[1], "a GPU step that ran no test tells nothing"
    assert smoke_runner.classify(pytest_step, 5, "no tests ran", 10)[0].startswith("FAILED: no tests collected")
    sanitizer = smoke_steps.Step("memcheck", ["compute-sanitizer"], 10, unsupported=smoke_steps.SANITIZER_UNSUPPORTED)
    assert smoke_runner.classify(sanitizer, 1, "========= Error: Device not supported", 10)[0].startswith("skipped: ")
    assert smoke_runner.classify(sanitizer, 99, "========= ERROR SUMMARY: 3 errors", 10) == \
        ("FAILED (exit status 99)", True)
    assert smoke_runner.summary_line("x\n========= ERROR SUMMARY: 3 errors\n") == "ERROR SUMMARY: 3 errors"


def smoke_steps_on_a_gpu(tmp_path):
    steps = smoke_steps.smoke_plan(gpu_context(tmp_path), argparse.Namespace(skip_build=False))
    for step in steps:
        step.skip = None  # as on a machine with compute-sanitizer
    return steps


def simulate(steps, hangs, card_s=5.0):
    """Elapsed seconds after the run and each step's timeout, steps taking their estimate (or, in
    ``hangs``, their whole timeout and the kill's grace period)."""
    elapsed, timeouts = card_s, []
    for i, step in enumerate(steps):
        timeout = smoke_runner.allot(step, steps[i + 1:], smoke_steps.SMOKE_BUDGET_S - elapsed)
        timeouts.append(timeout)
        if timeout is not None:
            elapsed += timeout + smoke_runner.KILL_GRACE_S if step.name in hangs else min(step.estimate_s, timeout)
    return elapsed, timeouts


def test_smoke_budget_fits_in_8_minutes_and_a_hanging_step_leaves_the_others_their_time(tmp_path):
    steps = smoke_steps_on_a_gpu(tmp_path)
    assert all(0 < s.estimate_s <= s.cap_s for s in steps)
    assert smoke_steps.SMOKE_BUDGET_S < 8 * 60 and sum(s.estimate_s for s in steps) < smoke_steps.SMOKE_BUDGET_S
    elapsed, timeouts = simulate(steps, hangs=set())
    assert all(s.estimate_s <= t <= s.cap_s for s, t in zip(steps, timeouts)), "on schedule"
    for hanging in steps:
        elapsed, timeouts = simulate(steps, hangs={hanging.name})
        assert elapsed <= smoke_steps.SMOKE_BUDGET_S, hanging.name
        later = steps[steps.index(hanging) + 1:]
        assert all(t >= s.estimate_s for s, t in zip(later, timeouts[-len(later):] if later else [])), hanging.name
    elapsed, timeouts = simulate(steps, hangs={s.name for s in steps})
    assert elapsed <= smoke_steps.SMOKE_BUDGET_S, "even when every step hangs"
    assert smoke_runner.allot(steps[0], steps[1:], remaining=None) == steps[0].cap_s, "no budget: the cap"
