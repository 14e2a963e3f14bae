"""The benchmark and check commands end to end, and the comparison helpers of fusedrnn.testing.

The command-line runs are subprocesses (as a user runs them) on tiny shapes
with one thread, so they take seconds; a deliberately wrong backend from
``tests/wrong_backend.py`` shows that a disagreeing backend fails loudly.
"""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusedrnn import backends, reference, testing
from fusedrnn.backends.base import LayerWeights
from fusedrnn.bench import check, cli
from fusedrnn.bench import shapes as bench_shapes

# in-process checks run tiny problems: one thread avoids OpenMP spin-waits on a busy machine
pytestmark = pytest.mark.usefixtures("single_thread")

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
WRONG = {
    "wrong-output": "wrong_backend:WrongOutputBackend",
    "wrong-gradient": "wrong_backend:WrongGradientBackend",
    "crashing": "wrong_backend:CrashingBackend",
}


def run_cli(*args, timeout=300):
    """``python -m <args>`` with tests/ importable (for wrong_backend); returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("FUSEDRNN_BACKEND", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def register_flags(*names):
    return [arg for n in names for arg in ("--register", f"{n}={WRONG[n]}")]


@pytest.fixture
def isolated_registry(monkeypatch):
    """Backends registered by a test disappear after it."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_instances", dict(backends._instances))
    monkeypatch.setattr(backends, "_import_errors", dict(backends._import_errors))
    monkeypatch.setattr(backends, "AUTO_PREFERENCE", {k: list(v) for k, v in backends.AUTO_PREFERENCE.items()})
    for name, target in WRONG.items():
        backends.register(name, target)


# ----------------------------------------------------------------------------
# The benchmark command
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("fusedrnn.bench", "--quick", "--threads", "1", "--out", str(out))
    return proc, out


def _only(out: Path, pattern: str) -> Path:
    found = sorted(out.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {out}, found {found}"
    return found[0]


def test_quick_bench_exits_zero_and_prints_the_table(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vs torch.nn" in proc.stdout and "GFLOP/s" in proc.stdout
    assert "torch.nn" in proc.stdout and "reference" in proc.stdout
    assert "peak matmul" in proc.stdout


def test_quick_bench_json_holds_every_figure_and_consistent_ratios(quick_run):
    proc, out = quick_run
    payload = json.loads(_only(out, "bench-cpu-*.json").read_text())
    for key in ("cpu_model", "logical_cores", "torch_threads", "gpu"):
        assert key in payload["machine"]
    assert payload["machine"]["torch_threads"] == 1
    for key in ("python", "torch", "triton", "fusedrnn", "git_commit"):
        assert key in payload["versions"]
    assert payload["settings"]["quick"] is True
    assert payload["peak_matmul"]["float32"]["gflops"] > 0
    assert payload["check"]["status"] == "passed"
    results = payload["results"]
    timed = ["torch.nn"] + cli.choose_backends(None, torch.device("cpu"), quick=True)
    assert "reference" in timed
    expected = {(c, s.T, s.B, s.I, s.H, m, i) for c in ("lstm", "gru", "rnn") for s in bench_shapes.PRESETS["quick"]
                for m in cli.MODES for i in timed}
    assert {(r["cell"], r["T"], r["B"], r["I"], r["H"], r["mode"], r["impl"]) for r in results
            if r["impl"] != "matmul"} == expected
    for r in results:
        assert r["status"] == "ok", r
        assert r["q20_ms"] <= r["median_ms"] <= r["q80_ms"]
        cell = bench_shapes.BENCH_CELLS[r["cell"]]
        shape = testing.Shape(r["T"], r["B"], r["I"], r["H"])
        flops = bench_shapes.forward_flops(cell, shape) * (3 if r["mode"] == "training" else 1)
        assert r["gflops"] == pytest.approx(flops / (r["median_ms"] * 1e-3) / 1e9, rel=1e-9)
        if r["impl"] == "matmul":
            continue
        torch_row = next(t for t in results if t["impl"] == "torch.nn" and
                         all(t[k] == r[k] for k in ("cell", "T", "B", "I", "H", "mode", "dtype")))
        # the median over the rounds (which alternate the implementations) of the per-round ratio
        assert len(r["round_ms"]) == len(torch_row["round_ms"]) == cli.CPU_ROUNDS
        per_round = [t / mine for t, mine in zip(torch_row["round_ms"], r["round_ms"])]
        assert r["ratio_vs_torch"] == pytest.approx(statistics.median(per_round), rel=1e-9)
        assert r["median_ms"] == pytest.approx(statistics.median(r["round_ms"]), rel=1e-9)
        if r["mode"] == "training":
            assert r["memory_bytes"] > 0 and r["memory_kind"].startswith("saved activations")


def test_quick_bench_times_the_per_call_overhead_group(quick_run):
    """Every case of the group (cell step, 2-layer stack on one step, 1-layer stack on a few steps, attention
    decoder) in both modes,
    torch.nn then fusedrnn, with the ratio computed as in the layer groups; in the markdown too."""
    from fusedrnn.bench import overhead

    _, out = quick_run
    payload = json.loads(_only(out, "bench-cpu-*.json").read_text())
    rows = payload["overhead"]
    assert payload["settings"]["overhead"] == list(overhead.DEFAULT_FAMILIES)
    expected = [(c.kind, c.family, tuple(c.shape), m, i) for c in overhead.cases(overhead.DEFAULT_FAMILIES)
                for m in cli.MODES for i in ("torch.nn", overhead.FUSEDRNN)]
    assert [(r["case"], r["cell"], (r["T"], r["B"], r["I"], r["H"]), r["mode"], r["impl"]) for r in rows] == expected
    assert {r["case"] for r in rows} == {"cell", "layer", "sequence", "decoder"}
    for torch_row, ours in zip(rows[::2], rows[1::2]):
        assert torch_row["status"] == ours["status"] == "ok", (torch_row, ours)
        assert len(ours["round_ms"]) == len(torch_row["round_ms"]) == cli.CPU_ROUNDS
        per_round = [t / mine for t, mine in zip(torch_row["round_ms"], ours["round_ms"])]
        assert ours["ratio_vs_torch"] == pytest.approx(statistics.median(per_round), rel=1e-9)
        assert ours["q20_ms"] <= ours["median_ms"] <= ours["q80_ms"]
    md = _only(out, "bench-cpu-*.md").read_text()
    assert "#### Per-call overhead" in md and "| decoder | lstm | 20,16,64,128 | training | fusedrnn |" in md


def test_overhead_group_compares_fusedrnn_with_torch_nn_before_timing():
    """The forward is compared before timing (run() then reports fusedrnn as failed, untimed): a wrong
    result is caught."""
    from fusedrnn.bench import overhead

    bench = overhead.OverheadBench(overhead.cases(["gru"])[0], torch.device("cpu"))
    assert bench.disagreement() is None
    with torch.no_grad():
        bench.modules[overhead.FUSEDRNN].bias_hh.add_(1e-2)
    assert "not close" in bench.disagreement()


def test_quick_bench_csv_matches_json(quick_run):
    _, out = quick_run
    payload = json.loads(_only(out, "bench-cpu-*.json").read_text())
    with open(_only(out, "bench-cpu-*.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(payload["results"])
    for row, r in zip(rows, payload["results"]):
        assert row["impl"] == r["impl"] and row["mode"] == r["mode"]
        assert float(row["median_ms"]) == pytest.approx(r["median_ms"])
        if r["ratio_vs_torch"] is not None:
            assert float(row["ratio_vs_torch"]) == pytest.approx(r["ratio_vs_torch"])
        assert row["cpu_model"] == payload["machine"]["cpu_model"]
        assert row["torch"] == torch.__version__


def test_quick_bench_writes_png_and_markdown(quick_run):
    _, out = quick_run
    png = _only(out, "bench-cpu-*.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = _only(out, "bench-cpu-*.md").read_text()
    assert "| cell |" in md and "python -m fusedrnn.bench --quick" in md


def test_bench_refuses_to_time_a_backend_that_disagrees_with_torch_nn(tmp_path):
    proc = run_cli("fusedrnn.bench", "--quick", "--threads", "1", "--cell", "rnn", "--shapes", "3,2,3,4",
                   "--check-steps", "2", "--out", str(tmp_path), *register_flags("wrong-output"),
                   "--backends", "reference,wrong-output")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: backend(s) wrong-output" in proc.stderr
    payload = json.loads(_only(tmp_path, "bench-cpu-*.json").read_text())
    assert {tuple(o["shape"]) for o in payload["check"]["outcomes"]} == {(2, 2, 3, 4)}  # the first 2 steps
    rows = payload["results"]
    statuses = {(r["impl"], r["status"]) for r in rows if r["impl"] != "matmul"}
    assert statuses == {("torch.nn", "ok"), ("reference", "ok"), ("wrong-output", "FAILED the check: not timed")}


def test_check_only_exits_nonzero_and_names_the_wrong_backend(tmp_path):
    proc = run_cli("fusedrnn.bench", "--check-only", "--quick", "--cell", "lstm", "--dtype", "float64",
                   "--out", str(tmp_path), *register_flags("wrong-output"), "--backends", "reference,wrong-output")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: backend(s) wrong-output" in proc.stdout
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert failures and all(line.startswith("FAIL wrong-output") for line in failures)
    report = json.loads(_only(tmp_path, "check-cpu-*.json").read_text())
    assert report["failed_backends"] == ["wrong-output"]


@pytest.mark.parametrize("argv,message", [
    (["--shapes", "1,2,3"], "--shapes"),
    (["--cell", "lstmx"], "--cell"),
    (["--backends", "nosuch"], "unknown backend 'nosuch'"),
    (["--dtype", "int8"], "unknown floating dtype"),
    (["--threads", "0"], "--threads"),
    (["--check-steps", "-1"], "--check-steps"),
    (["--overhead", "lstmx"], "--overhead"),
    (["--groups", "nosuch"], "--groups"),
], ids=["short-shape", "bad-cell", "unknown-backend", "bad-dtype", "zero-threads", "negative-check-steps",
        "bad-overhead-family", "bad-group"])
def test_bench_bad_arguments_exit_2_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_triton_is_never_timed_on_cpu(isolated_registry):
    backends.register("triton", "wrong_backend:WrongOutputBackend")  # stands in for an available triton
    assert "triton" not in cli.choose_backends(None, torch.device("cpu"), quick=True)
    with pytest.raises(ValueError, match="correctness only"):
        cli.choose_backends(["triton"], torch.device("cpu"), quick=True)


def test_reference_is_timed_only_when_quick_or_named():
    assert "reference" not in cli.choose_backends(None, torch.device("cpu"), quick=False)
    assert "reference" in cli.choose_backends(None, torch.device("cpu"), quick=True)
    assert cli.choose_backends(["reference"], torch.device("cpu"), quick=False) == ["reference"]


def test_tools_are_a_package_the_library_never_imports():
    """fusedrnn/bench/ uses the library, never the reverse; it imports without rich and matplotlib;
    the old names (fusedrnn.bench:main, the fusedrnn-bench script's; fusedrnn.check) still work."""
    code = "\n".join([
        "import sys",
        "sys.modules['rich'] = sys.modules['matplotlib'] = None  # as if not installed",
        "import fusedrnn",
        "assert not [m for m in sys.modules if m.startswith(('fusedrnn.bench', 'fusedrnn.check'))]",
        "import fusedrnn.bench.cli, fusedrnn.bench.check, fusedrnn.bench.plot, fusedrnn.check",
        "assert fusedrnn.check.main is fusedrnn.bench.check.main and fusedrnn.check.run is fusedrnn.bench.check.run",
        "assert callable(fusedrnn.bench.main) and fusedrnn.bench.console.rich is None",
    ])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------
# Shapes and FLOPs
# ----------------------------------------------------------------------------


def test_parse_shapes_presets_explicit_and_bad():
    shapes = bench_shapes.parse_shapes(["cpu", "100,32,256,256", "5,3,4,8"])
    assert shapes == bench_shapes.PRESETS["cpu"] + [testing.Shape(5, 3, 4, 8)]  # repeats dropped
    assert testing.Shape(1024, 16, 768, 768) in bench_shapes.parse_shapes(["gpu"])  # the quoted shape
    assert {s.B for s in bench_shapes.PRESETS["batch-sweep"]} == {1, 2, 4, 8, 16, 32, 64, 128, 256}
    assert bench_shapes.parse_shapes(["none"]) == []  # the per-call overhead group alone
    for bad in ("1,2,3", "a,b,c,d", "0,1,1,1", "nosuch"):
        with pytest.raises(ValueError, match="T,B,I,H"):
            bench_shapes.parse_shapes([bad])


@pytest.mark.parametrize("variant", ["lstm", "lstm-proj", "gru", "gru-reset-before", "rnn-tanh"])
def test_forward_flops_match_torchs_flop_counter(variant):
    """The FLOP formula against torch's own count of the reference forward's products."""
    case = testing.Case(variant, testing.Shape(4, 3, 5, 7))
    p = testing.make_problem(case)
    weights = LayerWeights(*(p.inputs.get(n) for n in testing.INPUTS[3:]))
    with FlopCounterMode(display=False) as counter:
        reference.sequence_forward(case.cell, p.inputs["x"], p.inputs["h0"], p.inputs.get("c0"), weights)
    assert bench_shapes.forward_flops(case.cell, case.shape, case.proj_size) == counter.get_total_flops()


# ----------------------------------------------------------------------------
# fusedrnn.testing and python -m fusedrnn.check
# ----------------------------------------------------------------------------

SMALL = dict(shapes=[(3, 4, 3, 5)], options=["padded", "packed-reverse"], dtypes=["float64"])  # + module cases


def test_reference_backend_passes_against_both_oracles():
    report = testing.compare_backend("reference", cells=["lstm", "lstm-peephole", "gru-reset-before", "rnn-relu"],
                                     modules=False, **SMALL)
    assert report.passed and len(report.checked) == 8
    oracles = {(o.case.variant, r.oracle) for o in report.checked for r in o.rows}
    assert ("lstm", "torch.nn") in oracles and ("rnn-relu", "torch.nn") in oracles
    assert ("lstm-peephole", "torch.nn") not in oracles and ("gru-reset-before", "torch.nn") not in oracles
    quantities = {r.quantity for o in report.checked if o.case.variant == "lstm" for r in o.rows}
    assert quantities == {"out", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh",
                          "grad_b_ih", "grad_b_hh"}


def test_wrong_gradient_is_caught_in_that_gradient_only(isolated_registry):
    report = testing.compare_backend("wrong-gradient", cells=["gru", "rnn-tanh"], **SMALL)
    assert not report.passed and report.failed_backends() == ["wrong-gradient"]
    failing = {r.quantity for o in report.failures() for r in o.rows if not r.passed}
    assert failing == {"grad_w_hh"}


def test_assert_close_to_reference_names_the_failure(isolated_registry):
    testing.assert_close_to_reference("reference", cells=["lstm"], **SMALL)
    with pytest.raises(AssertionError, match=r"wrong-output.*out vs reference"):
        testing.assert_close_to_reference("wrong-output", cells=["lstm"], **SMALL)


def test_crashing_backend_fails_the_check_without_crashing_it(isolated_registry):
    report = testing.compare_backend("crashing", cells=["rnn-tanh"], **SMALL)
    assert not report.passed
    assert all("this backend always fails" in o.crashed for o in report.outcomes)


def test_check_cli_wrong_gradient_exits_1(tmp_path):
    json_path = tmp_path / "check.json"
    proc = run_cli("fusedrnn.check", "--quick", "--cells", "rnn-tanh", "--dtype", "float32",
                   *register_flags("wrong-gradient"), "--backends", "wrong-gradient", "--json", str(json_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL wrong-gradient float32 rnn-tanh/" in proc.stdout and "grad_w_hh" in proc.stdout
    assert json.loads(json_path.read_text())["failed_backends"] == ["wrong-gradient"]


def test_check_cli_unavailable_named_backend_is_a_failure(isolated_registry, capsys):
    backends.register("absent", "no_such_module_anywhere:Backend")
    assert check.run(["absent"], ["float64"], "cpu", ["rnn-tanh"], [(2, 2, 2, 2)], ["padded"]) == 1
    assert "'absent' is unavailable" in capsys.readouterr().err


def test_error_measure_and_tolerances():
    expected = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    assert testing.error(expected + torch.tensor([0.0, 0.0, 0.004], dtype=torch.float64), expected) == \
        pytest.approx((0.004, 0.001))
    assert testing.error(torch.tensor([1.0, float("nan"), 2.0]), expected) == (float("inf"), float("inf"))
    assert testing.tolerance(torch.float32) == 1e-5 and testing.tolerance(torch.float64) == 1e-10
    assert testing.tolerance(torch.float32, baseline=1e-4) == 2e-4
    assert testing.tolerance(torch.bfloat16, baseline=1e-3) == pytest.approx(2e-3 + 2 ** -8)
    with pytest.raises(ValueError, match="baseline"):
        testing.tolerance(torch.float16)


def test_packed_problem_has_unsorted_lengths_reaching_T():
    problem = testing.make_problem(testing.Case("gru", (6, 5, 3, 37), "packed"))
    assert max(problem.lengths) == 6 and min(problem.lengths) >= 1
    assert problem.lengths != sorted(problem.lengths, reverse=True)


def test_module_check_compares_whole_modules_with_torch_nn(isolated_registry):
    """fusedrnn.LSTM/GRU/RNN (two layers, both directions, packed) against torch.nn on copied weights."""
    assert testing.modules_available()
    report = testing.compare_backend("reference", cells=["lstm-proj", "gru", "rnn-relu"], options=[], modules=True,
                                     shapes=[(4, 3, 3, 5)], dtypes=["float64"])
    assert report.passed and len(report.checked) == 3
    assert all(isinstance(o.case, testing.ModuleCase) for o in report.checked)
    quantities = {r.quantity for o in report.checked if o.case.variant == "lstm-proj" for r in o.rows}
    assert {"out", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0", "grad_w_proj", "grad_w_hh"} <= quantities
    wrong = testing.compare_backend("wrong-gradient", cells=["gru"], options=[], modules=True,
                                    shapes=[(4, 3, 3, 5)], dtypes=["float64"])
    assert {r.quantity for o in wrong.failures() for r in o.rows if not r.passed} == {"grad_w_hh"}


@pytest.mark.gpu
def test_quick_bench_on_cuda_times_cudnn_in_both_half_precisions(tmp_path):
    proc = run_cli("fusedrnn.bench", "--quick", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(_only(tmp_path, "bench-cuda-*.json").read_text())
    results = payload["results"]
    assert payload["machine"]["gpu"] and {r["dtype"] for r in results} == {"float16", "bfloat16"}
    assert all(r["status"] == "ok" for r in results)
    assert all(r["memory_kind"] == "peak CUDA allocation" and r["memory_bytes"] > 0
               for r in results if r["impl"] != "matmul")
    assert any(r["cuda_graph"] for r in results), "tiny shapes should be timed as CUDA graphs"
    assert _only(tmp_path, "bench-cuda-*.png").stat().st_size > 10_000


@pytest.mark.gpu
def test_check_passes_on_cuda_for_every_available_backend(tmp_path):
    proc = run_cli("fusedrnn.check", "--device", "cuda", "--quick", "--json", str(tmp_path / "check.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "check.json").read_text())["device"].startswith("cuda")


# ----------------------------------------------------------------------------
# The bf16, streaming and stack groups, and the machine's ceilings (issue 17)
# ----------------------------------------------------------------------------

EXTRA = ("bf16", "streaming", "bidir")


@pytest.fixture(scope="module")
def extra_groups_run(tmp_path_factory):
    """The three groups alone at --quick's tiny sizes (what --quick does to each: the group's module)."""
    out = tmp_path_factory.mktemp("bench-groups")
    proc = run_cli("fusedrnn.bench", "--quick", "--threads", "1", "--groups", ",".join(EXTRA), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(_only(out, "bench-cpu-*.json").read_text()), _only(out, "bench-cpu-*.md").read_text()


def _settings(threads=1):
    from types import SimpleNamespace

    return SimpleNamespace(device=torch.device("cpu"), threads=threads, min_time=0.01, max_time=0.05)


def _pairs_of_rounds_agree(base, row, key):
    per_round = [b / mine for b, mine in zip(base["round_ms"], row["round_ms"])]
    assert len(per_round) == cli.CPU_ROUNDS
    assert row[key] == pytest.approx(statistics.median(per_round), rel=1e-9)


def test_extra_groups_run_alone_with_every_case_and_no_layer_or_overhead_rows(extra_groups_run):
    from fusedrnn.bench import bf16, stacks, streaming

    _, payload, _ = extra_groups_run
    assert payload["results"] == [] and payload["overhead"] == []
    assert payload["settings"]["groups"] == list(EXTRA) and list(payload["groups"]) == list(EXTRA)
    expected = {
        "bf16": [(c.family, tuple(c.shape), m, i) for c in bf16.cases(["lstm", "gru"], quick=True)
                 for m in cli.MODES for i in ("torch.nn", "fusedrnn", bf16.FLOAT32)],
        "streaming": [(c.family, tuple(c.shape), "inference", i) for c in streaming.cases(["lstm", "gru"], quick=True)
                      for i in ("torch.nn", "fusedrnn")],
        "bidir": [("lstm", tuple(stacks.QUICK_SHAPE), m, i) for m in cli.MODES for i in ("torch.nn", "fusedrnn")],
    }
    for name, rows in payload["groups"].items():
        assert [(r["cell"], (r["T"], r["B"], r["I"], r["H"]), r["mode"], r["impl"]) for r in rows] == expected[name]
        for r in rows:
            assert r["status"] == "ok", r
            assert r["q20_ms"] <= r["median_ms"] <= r["q80_ms"] and r["gflops"] > 0
            torch_row = next(t for t in rows if t["impl"] == "torch.nn" and t["case"] == r["case"] and
                             all(t[k] == r[k] for k in ("cell", "T", "B", "I", "H", "mode")))
            _pairs_of_rounds_agree(torch_row, r, "ratio_vs_torch")
    assert {r["case"] for r in payload["groups"]["streaming"]} == {"sequence", "step"}


def test_bf16_group_reports_errors_vs_float64_and_the_ratio_to_its_own_float32(extra_groups_run):
    _, payload, _ = extra_groups_run
    rows = payload["groups"]["bf16"]
    for i in range(0, len(rows), 3):
        torch_row, ours, f32 = rows[i:i + 3]
        assert (torch_row["dtype"], ours["dtype"], f32["dtype"]) == ("bfloat16", "bfloat16", "float32")
        _pairs_of_rounds_agree(f32, ours, "ratio_vs_own_float32")
        assert torch_row["ratio_vs_own_float32"] is None and f32["ratio_vs_own_float32"] is None
        # bf16 rounding shows in both bf16 errors, float32's is orders of magnitude below them
        for r in (torch_row, ours):
            assert 1e-5 < r["error_vs_float64"] < 0.1
        assert f32["error_vs_float64"] < 1e-2 * min(torch_row["error_vs_float64"], ours["error_vs_float64"])
        for r in (torch_row, ours, f32):
            for dtype in ("float32", "bfloat16"):
                ceiling = payload["peaks"]["gflops"][dtype]["1"]
                assert r[f"peak_fraction_{dtype}"] == pytest.approx(r["gflops"] / ceiling, rel=1e-9)


def test_streaming_group_reports_per_step_latency_and_the_share_of_the_float32_peak(extra_groups_run):
    _, payload, _ = extra_groups_run
    ceiling = payload["peaks"]["gflops"]["float32"]["1"]
    for r in payload["groups"]["streaming"]:
        assert r["B"] == 1 and r["mode"] == "inference"
        assert r["step_ms"] == pytest.approx(r["median_ms"] / r["T"], rel=1e-9)
        assert r["peak_fraction_float32"] == pytest.approx(r["gflops"] / ceiling, rel=1e-9)
        step_flops = r["flops"] / r["T"]
        assert r["step_at_peak_ms"] == pytest.approx(step_flops / (ceiling * 1e9) * 1e3, rel=1e-9)
        # one read of the weights a step reads (W_hh in a sequence, all of a cell's in a step) at a measured
        # bandwidth, and the target's bound from both
        assert r["weights_read_ms"] > 0
        assert r["step_bound_ms"] == pytest.approx(2 * (r["step_at_peak_ms"] + r["weights_read_ms"]), rel=1e-9)


def test_read_bandwidth_is_per_buffer_size():
    """The cache read the per-step bound uses: a positive rate for a weight-sized buffer on the CPU, none
    elsewhere; more bytes take no less time to read."""
    from fusedrnn.bench import peaks

    cpu = torch.device("cpu")
    small, large = peaks.read_bandwidth(64 << 10, cpu, 1), peaks.read_bandwidth(64 << 20, cpu, 1)
    assert small > 0 and large > 0
    assert (64 << 20) / large >= (64 << 10) / small
    assert peaks.read_bandwidth(64 << 10, torch.device("meta"), 1) is None


def test_bidir_group_is_its_own_layer_by_layer_baseline_until_a_whole_stack_path_exists(extra_groups_run):
    from fusedrnn.bench import stacks

    from fusedrnn import modules

    _, payload, _ = extra_groups_run
    assert not hasattr(modules.LSTM(4, 4), stacks.LAYER_BY_LAYER_SWITCH)  # else this group times it (below)
    for r in payload["groups"]["bidir"]:
        assert r["ratio_vs_layer_by_layer"] == (None if r["impl"] == "torch.nn" else 1.0)
        flops = stacks.stack_flops(testing.Shape(r["T"], r["B"], r["I"], r["H"]))
        assert r["flops"] == flops * (3 if r["mode"] == "training" else 1)


def test_bidir_group_times_the_forced_layer_by_layer_path_when_the_module_has_the_switch(monkeypatch):
    from fusedrnn import modules
    from fusedrnn.bench import module_bench, stacks

    monkeypatch.setattr(modules.LSTM, stacks.LAYER_BY_LAYER_SWITCH, True, raising=False)
    bench = stacks.StackBench(stacks.cases(["lstm"], quick=True)[0], _settings())
    assert bench.impls == ["torch.nn", "fusedrnn", stacks.LAYER_BY_LAYER]
    forced = bench.subjects[stacks.LAYER_BY_LAYER].module
    assert getattr(forced, stacks.LAYER_BY_LAYER_SWITCH) is False
    assert getattr(bench.subjects["fusedrnn"].module, stacks.LAYER_BY_LAYER_SWITCH) is True
    rows = module_bench.time_cases([bench.case], lambda case: bench, _settings())
    by_impl = {(r["mode"], r["impl"]): r for r in rows}
    for mode in cli.MODES:
        _pairs_of_rounds_agree(by_impl[mode, stacks.LAYER_BY_LAYER], by_impl[mode, "fusedrnn"],
                               "ratio_vs_layer_by_layer")


def test_extra_groups_print_the_ceilings_and_write_their_markdown_sections(extra_groups_run):
    from fusedrnn.bench import peaks

    proc, payload, md = extra_groups_run
    assert set(payload["peaks"]["isa"]) == set(peaks.BF16_FLAGS)
    assert set(payload["peaks"]["gflops"]) == {"float32", "bfloat16"}
    assert all(g > 0 for by_threads in payload["peaks"]["gflops"].values() for g in by_threads.values())
    assert "avx512_bf16" in proc.stdout and "GFLOP/s" in proc.stdout
    for heading in ("#### bfloat16", "#### B=1 streaming", "#### 2-layer bidirectional LSTM", "Ceilings: peaks"):
        assert heading in md
    assert "| lstm | 5,3,4,8 | inference | fusedrnn float32 | float32 |" in md
    assert "| step | gru | 5,1,16,16 | fusedrnn |" in md


@pytest.mark.parametrize("group", ["bf16", "streaming", "bidir"])
def test_extra_groups_refuse_to_time_fusedrnn_when_it_disagrees(group):
    """Each group's check before timing catches a wrong fusedrnn (a bias off by 0.1): reported, not timed."""
    from fusedrnn.bench import bf16, module_bench, stacks, streaming

    s = _settings()
    if group == "bf16":
        bench = bf16.Bf16Bench(bf16.cases(["gru"], quick=True)[0], s, peaks={})
    elif group == "streaming":
        bench = streaming.StreamingBench(streaming.cases(["lstm"], quick=True)[1], s, peaks={})  # the cell steps
    else:
        bench = stacks.StackBench(stacks.cases(["lstm"], quick=True)[0], s)
    assert bench.failures() == {}
    module = bench.subjects[module_bench.FUSEDRNN].module
    with torch.no_grad():
        next(p for name, p in module.named_parameters() if name.startswith("bias_hh")).add_(0.1)
    failures = bench.failures()
    assert list(failures) == [module_bench.FUSEDRNN]
    rows = module_bench.time_cases([bench.case], lambda case: bench, s)
    ours = [r for r in rows if r["impl"] == module_bench.FUSEDRNN]
    assert ours and all(r["status"].startswith("FAILED the check: not timed") and r["median_ms"] is None for r in ours)


def test_cpu_flags_and_bf16_isa_read_proc_cpuinfo(tmp_path):
    from fusedrnn.bench import peaks

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\nflags\t: other\n")
    flags = peaks.cpu_flags(str(cpuinfo))
    assert flags == {"fpu", "avx512f", "avx512_bf16", "amx_tile"}
    isa = peaks.bf16_isa(flags)
    assert isa["avx512_bf16"] is True and isa["amx_tile"] is True and isa["amx_bf16"] is False
    assert peaks.cpu_flags(str(tmp_path / "absent")) is None
    assert set(peaks.bf16_isa(set()).values()) == {False}
    text = peaks.describe({"n": 8, "isa": peaks.bf16_isa(set()), "gflops": {"float32": {"1": 1.0}}})
    assert "no bf16 dot-product instructions" in text


def test_groups_option_selects_what_runs():
    settings = cli.Settings.from_args(cli.build_parser().parse_args([]), [])
    assert settings.groups == list(cli.DEFAULT_GROUPS) and settings.shapes and settings.overhead
    settings = cli.Settings.from_args(cli.build_parser().parse_args(["--groups", "overhead,bf16"]), [])
    assert settings.shapes == [] and settings.overhead and settings.groups == ["overhead", "bf16"]


def test_quick_default_run_has_every_group_but_bf16(quick_run):
    _, out = quick_run
    payload = json.loads(_only(out, "bench-cpu-*.json").read_text())
    assert payload["settings"]["groups"] == ["layers", "overhead", "streaming", "bidir"]
    assert list(payload["groups"]) == ["streaming", "bidir"] and payload["peaks"]["gflops"]["float32"]["1"] > 0
    settings = cli.Settings.from_args(cli.build_parser().parse_args(["--groups", "all"]), [])
    assert settings.groups == list(cli.GROUPS)
