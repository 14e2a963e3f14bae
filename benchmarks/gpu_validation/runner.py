"""Running a plan's steps: in order, each in its own process group under its own timeout, within one budget."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from . import REPO
from .steps import Step

#: seconds between SIGTERM and SIGKILL for a step past its timeout
KILL_GRACE_S = 5.0
#: a step offered less than this is skipped: it could not do anything useful
MIN_STEP_S = 5.0
#: lines of each step's output in the report and (fewer) on the console
TAIL_LINES = 25
CONSOLE_TAIL_LINES = 6
#: seconds between "still running" lines on the console
HEARTBEAT_S = 30.0
PYTEST_NO_TESTS = 5  # pytest's exit status when the selection is empty
#: variables that would make the GPU steps test something else (the interpreter, the CPU emulation)
CLEARED_ENV = ("TRITON_INTERPRET", "FUSEDRNN_CUDA_EMULATE")
#: the last line matching one of these is a step's one-line summary in the report
SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.*?)=*$"
                          r"|^(=+ ERROR SUMMARY: .*|fusedrnn check: .*|fusedrnn-bench: .*)$")


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
