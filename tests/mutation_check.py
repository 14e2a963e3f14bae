"""Mutation check of the CUDA kernels: plant known bugs, one at a time, and show that
the emulated CUDA tests or a sanitizer catch each.

    python tests/mutation_check.py [--only NAME ...] [--keep | --work DIR] [--list]
    make mutation-check              # the same, keeping its builds in build/mutation-check

It copies the tree (what setup.py reads to build the CUDA emulation, csrc/cuda/README.md
"Emulation", and the package and tests) into a scratch directory once, so this tree's
files are never touched and edits made meanwhile do not reach the run, and builds
the unmutated emulation there: plainly, and with each sanitizer a mutant asks for
(a build directory each, as `make emu-asan` / `make emu-tsan`).  The selected tests
must pass on those builds, else it stops.  Then per mutant: one exact textual edit
of one file of the copy (a search string not found exactly once is a "stale anchor"
and fails the run, so the list follows the kernels), an incremental rebuild (ninja
recompiles the changed file), the detectors, and the file restored.  The detectors:
the emulated tests a regression run (`make test`) runs on that kernel, with -x and
float32 first (this file is also the pytest plugin that orders them) because a
wrong result fails there first; then, for the race and out-of-bounds mutants, a
float32 part of them on the sanitizer's build.  A mutant is caught when a detector
fails; "equivalent" mutants change nothing observable (the list says why) and are
not counted.

Prints the results, writes them to build/mutation-check.md (every output to
build/mutation-check-logs/), and exits non-zero where a result is not what the list
expects (a bug that should be caught survives, an equivalent mutant is caught, a
mutant does not compile) or an anchor is stale.  tests/test_mutation_check.py checks
the anchors in every `make test`, in seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "build" / "mutation-check.md"
LOGS = REPO / "build" / "mutation-check-logs"  # every build and pytest output of the last run

# ----------------------------------------------------------------------------
# the mutants
# ----------------------------------------------------------------------------

#: -k selections of the emulated tests (tests/test_cuda_emulation.py, tests/test_cuda_backend.py)
PERSISTENT = "persistent"  # the persistent strategy (named in the test id): its forward and backward kernels
PER_STEP = "per_step"      # the per-step strategy: the pointwise kernels, forward and backward


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str                   # relative to the repository
    search: str                 # must occur exactly once in the file
    replace: str
    bug: str                    # the planted bug, in words
    select: str                 # -k expression: the tests of the kernel it breaks
    sanitizer: Optional[str] = None   # "address" or "thread": also run the tests under that build
    equivalent: Optional[str] = None  # why no test can catch it: not counted as missed

    def apply(self, text: str) -> str:
        """The file's text with the bug planted; ValueError (a stale anchor) unless the search is there once."""
        count = text.count(self.search)
        if count != 1:
            raise ValueError(f"stale anchor: {self.file} has the search string {count} times, not once")
        return text.replace(self.search, self.replace)


PERSISTENT_CU = "csrc/cuda/persistent.cu"
POINTWISE_CU = "csrc/cuda/pointwise.cu"
PERSISTENT_BACKWARD_CU = "csrc/cuda/persistent_backward.cu"

MUTANTS: List[Mutant] = [
    # --- the persistent forward's step loop: barriers (ThreadSanitizer too: the races themselves)
    Mutant("persistent-sync-step-start", PERSISTENT_CU,
           "__syncthreads();  // the previous step's readers", "/* removed */  // the previous step's readers",
           "the __syncthreads() at the top of the step removed", PERSISTENT, "thread",
           equivalent="the grid.sync() that ends the previous step already orders that step's reads of the "
                      "operand and the accumulator before this step's writes (grid.sync is a block barrier too)"),
    Mutant("persistent-sync-after-staging", PERSISTENT_CU,
           "stage_rows(cur, P, L.gates, n);\n    __syncthreads();", "stage_rows(cur, P, L.gates, n);",
           "the __syncthreads() between staging h and the product removed", PERSISTENT, "thread"),
    Mutant("persistent-sync-after-product", PERSISTENT_CU,
           "L.gates.k_pad);\n    __syncthreads();", "L.gates.k_pad);",
           "the __syncthreads() between the product and the gate math removed", PERSISTENT, "thread"),
    Mutant("persistent-sync-after-mid-staging", PERSISTENT_CU,
           "stage_rows(a.mid_exchange, H, L.mid, n);\n      __syncthreads();",
           "stage_rows(a.mid_exchange, H, L.mid, n);",
           "the __syncthreads() after staging r*h / o*tanh(c) (second product) removed", PERSISTENT, "thread"),
    # no ThreadSanitizer run: in float32 (what it runs) each thread reads back only the products it
    # computed itself there, so this barrier orders nothing; the 16-bit tests (WMMA) catch it
    Mutant("persistent-sync-after-mid-product", PERSISTENT_CU,
           "L.mid.k_pad);\n      }\n      __syncthreads();", "L.mid.k_pad);\n      }",
           "the __syncthreads() between the second product and its use removed", PERSISTENT),
    Mutant("persistent-grid-sync-step-end", PERSISTENT_CU,
           "    grid.sync();\n  }\n", "  }\n",
           "the grid.sync() that ends the step removed", PERSISTENT, "thread"),
    Mutant("persistent-grid-sync-mid-step", PERSISTENT_CU,
           "grid.sync();  // every unit's", "/* removed */  // every unit's",
           "the mid-step grid.sync() (GRU reset_before, LSTM projection) removed", PERSISTENT, "thread"),
    # --- the persistent backward (csrc/cuda/persistent_backward.cu)
    Mutant("persistent-backward-grid-sync", PERSISTENT_BACKWARD_CU,
           "grid.sync();  // every unit's dA of the step is written", "/* removed */",
           "the backward's grid.sync() between the gate gradients and the dh product removed", PERSISTENT, "thread"),
    Mutant("persistent-backward-dc-not-carried", PERSISTENT_BACKWARD_CU,
           "dc[idx] = r.dc_prev;", "(void)r.dc_prev;",
           "LSTM backward: the cell state's gradient not carried to the previous step", PERSISTENT),
    Mutant("persistent-backward-gru-direct-dropped", PERSISTENT_BACKWARD_CU,
           "dh[idx] = prod(b, u) + (kGru ? direct[idx] : 0.0f);", "dh[idx] = prod(b, u);",
           "GRU backward: dh_prev loses its z*dh (and dk*r) part", PERSISTENT),
    # only the benchmark shape (bf16 B=16 H=768) stages dA in chunks: the emulated test of that shape
    Mutant("persistent-backward-chunks-not-accumulated", PERSISTENT_BACKWARD_CU,
           "chunk, kc > 0);", "chunk, false);",
           "the dh product over chunks of K keeps only the last chunk", "benchmark_shape"),
    # --- the persistent forward: arithmetic, layout, bounds, packed rows (AddressSanitizer too where
    # an access leaves its buffer)
    Mutant("persistent-lstm-gates-i-f-swapped", PERSISTENT_CU,
           "gm::lstm_forward<float, false>(pre[0], pre[1],", "gm::lstm_forward<float, false>(pre[1], pre[0],",
           "LSTM gates i and f swapped in the gate math call", PERSISTENT),
    Mutant("persistent-smem-h-on-weights", PERSISTENT_CU,
           "L.a = carve.take(", "L.a = L.w + 0 * carve.take(",
           "shared memory: the staged h placed on top of the W_hh slice", PERSISTENT),
    Mutant("persistent-h-last-column-dropped", PERSISTENT_CU,
           "(b < n && k < K) ?", "(b < n && k < K - 1) ?",
           "the last column of h (and of r*h, o*tanh(c)) not staged: k < K - 1", PERSISTENT),
    Mutant("persistent-workspace-row-off-by-one", PERSISTENT_CU,
           "ws + (ws_off + b) * W + unit", "ws + (ws_off + b + 1) * W + unit",
           "the workspace row one batch row too far", PERSISTENT, "address"),
    Mutant("persistent-packed-rows-of-step-0", PERSISTENT_CU,
           "n = a.step_rows[p], off", "n = a.step_rows[0], off",
           "packed input: every step runs the row count of the first step", PERSISTENT, "address"),
    Mutant("persistent-no-h0-for-late-rows", PERSISTENT_CU,
           "if (unit < P) nxt[b * P + unit] = a.h0[b * P + unit];", "(void)unit;",
           "reverse packed: rows that start later do not get their h0", PERSISTENT),
    Mutant("persistent-h0-copy-bound", PERSISTENT_CU,
           "if (unit < P) nxt[b * P + unit] = a.h0", "if (unit <= P) nxt[b * P + unit] = a.h0",
           "reverse packed: the h0 copy bound unit <= P (one unit past the row)", PERSISTENT, "address"),
    # --- the pointwise kernels (the per-step strategy, forward and backward)
    Mutant("pointwise-gru-workspace-r-z-swapped", POINTWISE_CU,
           "store<V>(ws, r), store<V>(ws + H, z), store<V>(ws + 2 * H, nn)",
           "store<V>(ws, z), store<V>(ws + H, r), store<V>(ws + 2 * H, nn)",
           "GRU reset_after forward: r and z swapped in the workspace", PER_STEP),
    Mutant("pointwise-lstm-backward-o-slot", POINTWISE_CU,
           "load<V>(ws + 3 * H, go)", "load<V>(ws + 2 * H, go)",
           "LSTM backward: the o gate read from the g slot of the workspace", PER_STEP),
    Mutant("pointwise-last-unit-dropped", POINTWISE_CU,
           "const int64_t per_row = H / V;", "const int64_t per_row = (H - 1) / V;",
           "every pointwise kernel: the last unit (or group of 4) of each row dropped", PER_STEP),
    Mutant("pointwise-thread-bound", POINTWISE_CU,
           "if (idx >= n * per_row) return false;", "if (idx > n * per_row) return false;",
           "every pointwise kernel: one thread past the last row (idx > n * per_row)", PER_STEP, "address"),
]

# ----------------------------------------------------------------------------
# the scratch copy and its builds
# ----------------------------------------------------------------------------

#: setup.py's inputs (README.md is its long_description), and the package and tests the
#: detectors run, so that a run sees one moment of the tree even while others edit it
SNAPSHOT = ("setup.py", "pyproject.toml", "README.md", "csrc", "fusedrnn", "tests")
#: not copied: bytecode, and the emulation module (the run loads its own builds)
SKIPPED = re.compile(r"(^|/)__pycache__/|^fusedrnn/_cuda_emulation[^/]*$")


def snapshot_files(root: Path) -> "set[Path]":
    """The files of SNAPSHOT under root, relative to it."""
    files = set()
    for name in SNAPSHOT:
        top = root / name
        found = [p for p in top.rglob("*") if p.is_file()] if top.is_dir() else [top] if top.is_file() else []
        files.update(p.relative_to(root) for p in found if not SKIPPED.search(p.relative_to(root).as_posix()))
    return files


def copy_tree(src: Path) -> None:
    """This tree's SNAPSHOT into src.  A file already there with the same content is left alone, any
    other is written anew (and one gone from the tree removed): its time is then newer than every
    object built from an earlier version, so ninja recompiles exactly what changed since an earlier
    run in the same directory (--work), a mutant planted by that run included."""
    wanted = snapshot_files(REPO)
    for rel in snapshot_files(src) - wanted:
        (src / rel).unlink()
    for rel in wanted:
        target = src / rel
        if not target.is_file() or target.read_bytes() != (REPO / rel).read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / rel, target)


def tool_environment() -> dict:
    """This interpreter's scripts (ninja) first on PATH, as the Makefile's RUN does."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


#: the builds: None (plain), "address" (AddressSanitizer+UBSan) or "thread" (ThreadSanitizer)
LABEL = {None: "tests", "address": "asan", "thread": "tsan"}
#: the runtime options of the Makefile's emu-asan / emu-tsan (ASAN_SETTINGS, TSAN_SETTINGS): any report stops the run
SANITIZER_OPTIONS = {
    "address": {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=1",
                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    "thread": {"TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1"},
}


@dataclass(frozen=True)
class Scratch:
    src: Path       # the copy of the tree; builds in src/out/<plain|address|thread>
    logs: Path
    timeout: float  # seconds per pytest run

    def build(self, sanitizer: Optional[str], log_name: str) -> Optional[Path]:
        """Builds fusedrnn._cuda_emulation alone, incrementally (as `make emu-asan` does); the module,
        or None if the build failed (its output in the log)."""
        out = self.src / "out" / (sanitizer or "plain")
        env = dict(tool_environment(), FUSEDRNN_REQUIRE_EXTENSION="1", FUSEDRNN_EMULATION_ONLY="1")
        if sanitizer:
            env["FUSEDRNN_EMULATION_SANITIZER"] = sanitizer
        # -f: setuptools would call the module up to date (its sources, the generated one-line
        # wrappers, never change); ninja then recompiles only the objects whose inputs did
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "-f", "--build-lib", str(out), "--build-temp",
               str(out / "tmp")]
        with (self.logs / log_name).open("w") as f:
            proc = subprocess.run(cmd, cwd=self.src, env=env, stdout=f, stderr=subprocess.STDOUT)
        modules = sorted((out / "fusedrnn").glob("_cuda_emulation*.so"))
        return modules[0] if proc.returncode == 0 and modules else None

    def pytest(self, k: str, env: dict, log_name: str) -> "tuple[Optional[int], str]":
        """pytest -x on the copy's emulated tests selected by k: (exit status, None on a timeout; output)."""
        # --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process, which
        # pytest's default capture of that descriptor would swallow
        cmd = [sys.executable, "-m", "pytest", *EMU_TESTS, "-m", "not gpu", "-k", k, "-x", "-q", "--capture=sys",
               "-p", "no:cacheprovider", "-p", "mutation_check"]
        try:
            proc = subprocess.run(cmd, cwd=self.src, env=env, capture_output=True, text=True, timeout=self.timeout)
            status, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            status, output = None, "".join(
                part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                for part in (exc.stdout, exc.stderr))
        with (self.logs / log_name).open("a") as f:
            f.write(f"$ pytest -k {k!r}\n{output}\n")
        return status, output


# ----------------------------------------------------------------------------
# detectors: the emulated tests on a build
# ----------------------------------------------------------------------------

EMU_TESTS = ("tests/test_cuda_emulation.py", "tests/test_cuda_backend.py")
#: what the sanitizer builds run: fusedrnn.testing's grid on its odd shape (T=7 B=5 I=3 H=37: every
#: cell, every layout option) in float32, a part of `make emu-asan` / `make emu-tsan` (the float32
#: persistent tests alone take 5 min under ThreadSanitizer on 2 cores, this part 1)
SANITIZER_SELECT = "test_matches_reference_and_torch_nn and T7 and float32"


def selection(select: str, sanitizer: Optional[str]) -> str:
    return f"({select}) and {SANITIZER_SELECT}" if sanitizer else select


#: test ids name float32 "float32" (fusedrnn.testing's grid) or "f32" (test_cuda_backend)
FLOAT32_ID = re.compile(r"float32|f32")


def pytest_collection_modifyitems(items):
    """A pytest hook: the detectors load this file as a plugin (-p mutation_check).  float32 tests
    run first, in their order, then the rest: a wrong result fails there first, and -x stops."""
    items.sort(key=lambda item: FLOAT32_ID.search(item.nodeid) is None)


def sanitizer_environment(sanitizer: str) -> dict:
    """LD_PRELOAD of the sanitizer's runtime (Python itself is not instrumented) and its options."""
    cxx = os.environ.get("CXX", "c++")

    def library(name):
        return subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()

    runtime = {"address": "libasan.so", "thread": "libtsan.so"}[sanitizer]
    return dict(SANITIZER_OPTIONS[sanitizer], LD_PRELOAD=f"{library(runtime)} {library('libstdc++.so')}")


def detector_environment(module: Path, sanitizer: Optional[str]) -> dict:
    # one intra-op thread, as emu-asan / emu-tsan: the kernels run on the calling thread anyway
    env = dict(tool_environment(), OMP_NUM_THREADS="1", FUSEDRNN_REQUIRE_EXTENSION="1",
               FUSEDRNN_CUDA_EMULATION_LIBRARY=str(module))
    # this file, as the plugin that orders the tests (pytest_collection_modifyitems)
    paths = [str(Path(__file__).resolve().parent)] + env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if sanitizer:
        env.update(sanitizer_environment(sanitizer))
    return env


SANITIZER_REPORT = re.compile(r"(WARNING: ThreadSanitizer: [^(\n]*|ERROR: AddressSanitizer: [\w-]+|"
                              r"runtime error: [^\n]*)")
#: the first frame of a sanitizer's stack in the kernels' sources (not the emulation's, e.g. its __ldcg)
SOURCE_FRAME = re.compile(r"#\d+ .*?/csrc/cuda/([\w.]+:\d+)")
CRASH = re.compile(r"Fatal Python error: ([^\n]*)")
CRASHED_TEST = re.compile(r'File "[^"]*/tests/test_\w+\.py", line \d+ in (test_\w+)')
FAILED_TEST = re.compile(r"^(?:FAILED|ERROR) ([^\s\[]+(?:\[[^\]]*\])?)", re.MULTILINE)


def describe_failure(status: Optional[int], output: str) -> str:
    """What made a run fail: the sanitizer's report (and the kernel's source line on its stack), else
    the first failing test, else the crash (faulthandler's report) or how the process ended."""
    if status is None:
        return "timed out"
    report = SANITIZER_REPORT.search(output)
    if report:
        frame = SOURCE_FRAME.search(output, report.end())
        return report.group(1).strip() + (f" at {frame.group(1)}" if frame else "")
    failed = FAILED_TEST.search(output)
    if failed:
        return failed.group(1).split("::", 1)[-1]
    crash = CRASH.search(output)
    if crash:  # faulthandler's report: the signal, and the test function on the stack
        test = CRASHED_TEST.search(output, crash.end())
        return f"crash ({crash.group(1)})" + (f" in {test.group(1)}" if test else "")
    last = [line for line in output.splitlines() if line.strip()][-1:] or [""]
    return f"exit status {status}: {last[0][:100]}"


@dataclass
class Verdict:
    caught: bool
    by: str          # the first failing test or the sanitizer's report; "survived"
    seconds: float


def detect(scratch: Scratch, select: str, module: Path, sanitizer: Optional[str], log_name: str) -> Verdict:
    start = time.monotonic()
    status, output = scratch.pytest(selection(select, sanitizer), detector_environment(module, sanitizer), log_name)
    by = describe_failure(status, output) if status != 0 else "survived"
    return Verdict(status != 0, by, time.monotonic() - start)


# ----------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------


def detectors_of(mutant: Mutant) -> "list[Optional[str]]":
    """The builds a mutant's tests run on: the plain one, then its sanitizer's."""
    return [None] + ([mutant.sanitizer] if mutant.sanitizer else [])


@dataclass
class Result:
    mutant: Mutant
    verdicts: "dict[str, Verdict]" = field(default_factory=dict)  # by LABEL of the build
    error: Optional[str] = None  # a stale anchor, a mutant that does not compile
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return any(v.caught for v in self.verdicts.values())

    @property
    def as_expected(self) -> bool:
        return self.error is None and self.caught != bool(self.mutant.equivalent)

    def outcome(self) -> str:
        if self.error:
            return self.error
        if self.mutant.equivalent:
            return "CAUGHT: not equivalent" if self.caught else "equivalent"
        return "caught" if self.caught else "SURVIVED"


def check_baseline(scratch: Scratch, mutants: Sequence[Mutant]) -> "dict[Optional[str], Path]":
    """Builds every variant the mutants need from the unmutated copy and runs each of their selections
    on it: all must pass, or a mutant's failing test would prove nothing.  The modules by variant."""
    modules = {}
    for sanitizer in dict.fromkeys(s for m in mutants for s in detectors_of(m)):
        label = LABEL[sanitizer]
        print(f"baseline: building the emulation for {label} ...", flush=True)
        start = time.monotonic()
        module = scratch.build(sanitizer, f"baseline-build-{label}.log")
        if module is None:
            sys.exit(f"the unmutated build for {label} failed: {scratch.logs / f'baseline-build-{label}.log'}")
        modules[sanitizer] = module
        print(f"  built in {time.monotonic() - start:.0f} s", flush=True)
        for select in dict.fromkeys(m.select for m in mutants if sanitizer in detectors_of(m)):
            start = time.monotonic()
            log_name = f"baseline-{label}-{select}.log"
            status, output = scratch.pytest(selection(select, sanitizer), detector_environment(module, sanitizer),
                                            log_name)
            if status != 0:  # 5, nothing selected, too
                sys.exit(f"the unmutated build fails its {label} run (-k {select!r}): "
                         f"{describe_failure(status, output)}; see {scratch.logs / log_name}.  Fix that first.")
            print(f"  {label} -k {select!r} pass ({time.monotonic() - start:.0f} s)", flush=True)
    return modules


def run_mutant(scratch: Scratch, mutant: Mutant, modules: dict) -> Result:
    """Plants the mutant in the copy, rebuilds, runs its detectors, and restores the file."""
    start = time.monotonic()
    result = Result(mutant)
    path = scratch.src / mutant.file
    original = path.read_text()
    try:
        path.write_text(mutant.apply(original))
    except ValueError as exc:
        result.error = "stale anchor"
        print(f"  {exc}", flush=True)
        return result
    try:
        for sanitizer in detectors_of(mutant):
            label = LABEL[sanitizer]
            if scratch.build(sanitizer, f"{mutant.name}-build-{label}.log") is None:
                result.error = f"does not compile ({label} build)"
                break
            result.verdicts[label] = detect(scratch, mutant.select, modules[sanitizer], sanitizer,
                                            f"{mutant.name}-{label}.log")
    finally:
        path.write_text(original)
    result.seconds = time.monotonic() - start
    return result


def progress_line(result: Result) -> str:
    found = "; ".join(f"{label}: {v.by} ({v.seconds:.0f} s)" for label, v in result.verdicts.items())
    return f"  -> {result.outcome()} in {result.seconds:.0f} s" + (f"; {found}" if found else "")


# ----------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------


def summary(results: Sequence[Result], seconds: float) -> str:
    counted = [r for r in results if not r.mutant.equivalent]
    caught = sum(r.caught and r.error is None for r in counted)
    return (f"{caught} of {len(counted)} mutants caught ({100 * caught / max(len(counted), 1):.0f} %), "
            f"{len(results) - len(counted)} equivalent (not counted); {seconds / 60:.1f} min")


def markdown(results: Sequence[Result], seconds: float) -> str:
    lines = ["# Mutation check of the CUDA kernels (tests/mutation_check.py)", "", summary(results, seconds), "",
             "| mutant | file | bug | result | caught by |", "|---|---|---|---|---|"]
    for r in results:
        by = [f"{label}: `{v.by}`" for label, v in r.verdicts.items() if v.caught]
        if r.mutant.equivalent:
            by.append(f"equivalent: {r.mutant.equivalent}")
        row = [r.mutant.name, Path(r.mutant.file).name, r.mutant.bug, r.outcome(), "; ".join(by)]
        lines.append("| " + " | ".join(text.replace("|", "\\|") for text in row) + " |")
    return "\n".join(lines) + "\n"


def print_table(results: Sequence[Result]) -> None:
    width = max(len(r.mutant.name) for r in results)
    for r in results:
        first = next((f"{label}: {v.by}" for label, v in r.verdicts.items() if v.caught), "")
        print(f"{r.mutant.name:<{width}}  {r.outcome():<22}  {first}")


# ----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", choices=[m.name for m in MUTANTS],
                        help="run only this mutant (repeatable; --list names them)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    parser.add_argument("--work", type=Path, help="use (and keep) this scratch directory; a later run reuses "
                                                  "its builds")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (default 600)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    return parser.parse_args(argv)


def run(scratch: Scratch, mutants: Sequence[Mutant]) -> "list[Result]":
    copy_tree(scratch.src)
    modules = check_baseline(scratch, mutants)
    results = []
    for i, mutant in enumerate(mutants, 1):
        print(f"[{i}/{len(mutants)}] {mutant.name}: {mutant.bug}", flush=True)
        results.append(run_mutant(scratch, mutant, modules))
        print(progress_line(results[-1]), flush=True)
    return results


def report(results: Sequence[Result], seconds: float) -> int:
    """Prints the table, writes the markdown; the exit status (1 where a result is not as the list expects)."""
    print()
    print_table(results)
    print(summary(results, seconds))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(markdown(results, seconds))
    print(f"written: {REPORT.relative_to(REPO)}; logs: {LOGS.relative_to(REPO)}/")
    unexpected = [r.mutant.name for r in results if not r.as_expected]
    if unexpected:
        print(f"not as the list expects: {', '.join(unexpected)}", file=sys.stderr)
    return 1 if unexpected else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:<40} {m.file}: {m.bug}")
        return 0
    start = time.monotonic()
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="fusedrnn-mutation-"))
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    try:
        results = run(Scratch(work / "src", LOGS, args.timeout), mutants)
    finally:
        if args.keep or args.work:
            print(f"scratch directory (sources, builds): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report(results, time.monotonic() - start)


if __name__ == "__main__":
    sys.exit(main())
