"""The bad-input matrix (tests/bad_input_cases.py): every malformed call, on torch.nn and on
fusedrnn's ``reference`` and ``cpu`` backends, in subprocesses.

A subprocess per group of cases runs them all, torch.nn's call first, and
reports each outcome as a JSON line; if it dies (segfault, abort) or a call
hangs, the call it was in is recorded as crashed or hung and the group's
remaining calls go on in a fresh subprocess.  So a crash is one failing case,
never the end of the run, and a hang costs :data:`PAIR_TIMEOUT` seconds.

The rules are in tests/bad_input_cases.py; :func:`judge` applies them.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest

import bad_input_cases as bic

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "bad_input_cases.py"
REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
#: seconds one call may take before it is a hang (the calls take milliseconds; a loaded CI machine is slow)
PAIR_TIMEOUT = 60
GROUPS = sorted({c.group for c in bic.CASES.values()})

Pair = Tuple[str, str]


def run_worker(pairs: List[Pair], pair_timeout: float = PAIR_TIMEOUT) -> Dict[Pair, dict]:
    """Outcome of every (case, implementation): the worker's report, or crashed/hung with the details."""
    results: Dict[Pair, dict] = {}
    torch_crashed: set = set()
    remaining = list(pairs)
    while remaining:
        with tempfile.TemporaryDirectory() as tmp:
            events_file = pathlib.Path(tmp, "events.jsonl")
            job = json.dumps({"pairs": remaining, "torch_crashed": sorted(torch_crashed)})
            try:
                done = subprocess.run([sys.executable, str(WORKER), "--out", str(events_file),
                                       "--pair-timeout", str(pair_timeout)],
                                      input=job, capture_output=True, text=True, cwd=HERE.parent,
                                      timeout=pair_timeout * len(remaining) + 120)
                rc, stderr, killed = done.returncode, done.stderr, False
            except subprocess.TimeoutExpired as exc:  # a backstop: the worker's own watchdog ends hangs first
                stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                rc, killed = None, True
            events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
        interrupted: Optional[Pair] = None
        for event in events:
            pair = (event["case"], event["impl"])
            if event["event"] == "start":
                interrupted = pair
            else:
                results[pair] = event
                interrupted = None
        if interrupted is None:
            if rc == 0 and all(tuple(p) in results for p in remaining):
                break
            raise RuntimeError(f"the bad-input worker failed outside any case (exit {rc}):\n{stderr[-3000:]}")
        hung = killed or "Timeout (" in stderr  # faulthandler's watchdog message
        results[interrupted] = {"status": "hung" if hung else "crashed",
                                "detail": f"{_exit_description(rc)}; stderr: ...{stderr[-1500:]}"}
        if interrupted[1] == bic.TORCH:
            torch_crashed.add(interrupted[0])
        remaining = [p for p in remaining if tuple(p) not in results]
    return results


def _exit_description(rc) -> str:
    if rc is None:
        return "killed after the time limit"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def pairs_of(cases) -> List[Pair]:
    """torch.nn's call of each case first (fusedrnn's results are compared with it), then each backend's."""
    pairs = []
    for case in cases:
        if case.torch_twin:
            pairs.append((case.name, bic.TORCH))
        pairs += [(case.name, impl) for impl in bic.FUSED]
    return pairs


def judge(case: bic.Case, torch_result: Optional[dict], fused: dict) -> Optional[str]:
    """Why fusedrnn's outcome breaks the rules (module docstring of bad_input_cases), or None."""
    status = fused["status"]
    if status in ("crashed", "hung"):
        return f"fusedrnn {status}: {fused['detail']}"
    raised = f"{fused.get('type')}: {fused.get('message')}"

    def must_raise(types, why):
        if status != "raised":
            return f"{why}, but fusedrnn returned a result"
        if fused["type"] not in {t.__name__ for t in types}:
            return f"{why}; fusedrnn raised {raised}, expected {' or '.join(t.__name__ for t in types)}"
        if not bic.keyword_matches(case, fused["message"]):
            return f"fusedrnn's message does not name the problem (/{case.keyword}/): {raised}"
        return None

    if not case.torch_twin:
        return must_raise(case.raises, "fusedrnn's own check must refuse this call")
    torch_status = torch_result["status"]
    if torch_status == "raised":
        if status != "raised":
            return f"torch.nn raised {torch_result['type']}: {torch_result['message']}, but fusedrnn returned"
        if fused["type"] != torch_result["type"]:
            return f"torch.nn raised {torch_result['type']}: {torch_result['message']}; fusedrnn raised {raised}"
        if not bic.keyword_matches(case, fused["message"]):
            return f"fusedrnn's message does not name the problem (/{case.keyword}/): {raised}"
        return None
    if torch_status in ("crashed", "hung") or case.clearer:
        why = f"torch.nn {torch_status}" + (f" ({case.clearer})" if case.clearer else "")
        return must_raise(case.raises, why)
    if status == "raised":
        return f"torch.nn returned, fusedrnn raised {raised}"
    if fused.get("mismatch"):
        return f"fusedrnn's result differs from torch.nn's: {fused['mismatch']}"
    return None


@pytest.fixture(scope="module")
def matrix() -> Dict[Pair, dict]:
    """Every group's outcomes, two groups at a time (one worker each; the calls are single-threaded)."""
    why = __import__("fusedrnn").backends.unavailable_reason("cpu")
    if why is not None and not REQUIRED:
        pytest.skip(f"the cpu backend is not built in this checkout: {why}")
    results: Dict[Pair, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(run_worker, pairs_of([c for c in bic.CASES.values() if c.group == g])) for g in GROUPS]
        for job in jobs:
            results.update(job.result())
    return results


PARAMS = [pytest.param(name, impl, id=f"{case.group}-{name}-{impl.split(':')[-1]}")
          for name, case in bic.CASES.items() for impl in bic.FUSED]


@pytest.mark.parametrize("name,impl", PARAMS)
def test_bad_input(matrix, name, impl):
    case = bic.CASES[name]
    failure = judge(case, matrix.get((name, bic.TORCH)), matrix[(name, impl)])
    assert failure is None, f"{name} on {impl}: {failure}"


def test_clearer_marks_hold(matrix):
    """A case marked 'clearer than torch.nn' is one where torch.nn crashes, hangs or returns (garbage):
    where torch.nn raises instead, the mark is stale (and the count in README.md with it)."""
    stale = [f"{c.name}: torch.nn raised {matrix[(c.name, bic.TORCH)].get('type')}"
             for c in bic.CASES.values() if c.clearer and matrix[(c.name, bic.TORCH)]["status"] == "raised"]
    assert not stale, "\n".join(stale)


def test_harness_names_crashes_hangs_and_wrong_answers():
    """The worker protocol itself: an abort and a hang are named as such and the run goes on
    (the hang last, so its time limit is the only wait); a result 0.1% off is a mismatch."""
    order = ["selftest_returns", "selftest_wrong_answer", "selftest_aborts", "selftest_hangs"]
    pairs = [(name, impl) for name in order for impl in (bic.TORCH, "fusedrnn:reference")]
    results = run_worker(pairs, pair_timeout=3)
    fused = {name: results[(name, "fusedrnn:reference")] for name in order}
    assert fused["selftest_returns"]["status"] == "returned" and fused["selftest_returns"]["mismatch"] is None
    assert fused["selftest_wrong_answer"]["mismatch"], fused["selftest_wrong_answer"]
    assert fused["selftest_aborts"]["status"] == "crashed" and "SIGABRT" in fused["selftest_aborts"]["detail"]
    assert fused["selftest_hangs"]["status"] == "hung", fused["selftest_hangs"]
    for name in order[1:]:
        assert judge(bic.SELFTEST[name], results[(name, bic.TORCH)], fused[name]) is not None
