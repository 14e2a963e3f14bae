"""``python -m fusedrnn.bench`` (``fusedrnn-bench``, ``make bench``): fusedrnn against torch.nn on this machine.

For each cell, shape and dtype it first checks every timed backend against
torch.nn in float64 on the benchmark shape (outputs and every gradient; see
:mod:`fusedrnn.testing` for the tolerances; on CPU over the first
``--check-steps`` steps of the sequence), then times inference
(``torch.no_grad`` forward) and training (forward + backward of the input and
every weight) for torch.nn and each backend on the same weights and inputs,
plus one torch matmul of the forward's FLOPs and the machine's peak matmul as
reference lines.  It prints a table, and writes JSON, CSV, markdown and a PNG
plot into ``--out``.  Exit status: 0, or 1 when a backend fails the check or
fails to run, 2 on bad arguments.

What is timed is one layer-direction (``fusedrnn.functional.layer``), with the
weights of a one-layer unidirectional torch.nn module, so the comparison is
exact and measures the kernels.  Timing: :mod:`fusedrnn.bench.timing`; the rounds that
alternate the implementations: :mod:`fusedrnn.bench.rounds`.

Then the per-call overhead group (:mod:`fusedrnn.bench.overhead`; ``--overhead``): a cell
step, a 2-layer stack called on one time step and an attention decoder stepping 20 tokens,
fusedrnn's modules against torch.nn's, where a call's fixed cost matters as much as its
arithmetic.

Then, with the machine's float32 and bf16 matmul ceilings measured first (:mod:`fusedrnn.bench.peaks`), the
B=1 streaming group (:mod:`fusedrnn.bench.streaming`: per-sequence and per-step latency) and the 2-layer
bidirectional group (:mod:`fusedrnn.bench.stacks`), and, opt-in (``--groups bf16`` or ``all``: slow), the
bfloat16 group (:mod:`fusedrnn.bench.bf16`: against torch.nn bf16 and our own float32, with errors vs
float64).  ``--groups`` picks the groups (``layers``, ``overhead``, ``streaming``, ``bidir``, ``bf16``).

Defaults: on CPU the shapes of docs/design.md section 10 in float32 with torch's thread count (the
reference backend only with ``--quick`` or ``--backends reference``: it is far
too slow for these shapes; Triton never on CPU: its interpreter is for
correctness only); on CUDA the batch, sequence-length and hidden-size sweeps
around the quoted shape (LSTM B=16 T=1024 H=768) in float16 and bfloat16, each
against cuDNN in the same dtype.

Examples::

    python -m fusedrnn.bench                                  # the default run (CPU: about 6 minutes on 2 cores)
    python -m fusedrnn.bench --quick --out /tmp/b             # a few seconds, tiny shapes
    python -m fusedrnn.bench --cell lstm --shapes flashrnn 256,16,768,768 --dtype bfloat16
    python -m fusedrnn.bench --groups bf16,streaming          # those groups alone
    python -m fusedrnn.bench --check-only                     # the correctness grid (python -m fusedrnn.check)
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import backends, functional, testing
from ..backends.base import LayerWeights
from ..testing import Shape, dtype_name
from . import bf16, check, env, overhead, peaks, stacks, streaming
from .console import progress
from .report import markdown, print_results, threads_text, write_csv, write_json
from .shapes import BENCH_CELLS, CHECK_VARIANTS, DEFAULT_PRESET, PRESETS, forward_flops, parse_shapes
from .rounds import CPU_ROUNDS, measure_group, result_row, timed_fields  # noqa: F401  (CPU_ROUNDS: tests)
from .timing import cuda_peak_bytes, matmul_gflops, peak_matmul_size, saved_activation_bytes, storage_ptrs

TORCH = "torch.nn"
MATMUL = "matmul"
MODES = ("inference", "training")
#: backends that are never timed on a device type, and why
NOT_TIMED = {("triton", "cpu"): "the Triton interpreter is for correctness only",
             ("cpu", "cuda"): "the cpu backend runs CPU tensors only"}
#: backends too slow for full-size shapes: timed only with --quick or when named
SLOW = {"reference"}
DEFAULT_OUT = os.path.join("benchmarks", "results")
#: the groups beside the layer group ("layers") and the per-call overhead group ("overhead"), each a module
#: with run(families, s, peaks, quick, advance), count(families, quick), FAMILIES, print_rows and markdown
EXTRA_GROUPS = {bf16.NAME: bf16, streaming.NAME: streaming, stacks.NAME: stacks}
GROUPS = ("layers", "overhead", *EXTRA_GROUPS)
#: what a run times unless --groups says otherwise: all but bf16, whose torch.nn bf16 side alone (without
#: avx512_bf16, converted to float32 inside) would take the default CPU run past ten minutes on 2 cores
#: (wall times in benchmarks/RESULTS.md)
DEFAULT_GROUPS = ("layers", "overhead", streaming.NAME, stacks.NAME)
#: the groups that show a share of the machine's measured ceilings (peaks.py), so need them measured
NEEDS_PEAKS = {bf16.NAME, streaming.NAME}
#: steps of each benchmark shape the CPU check runs (torch.nn in float64 at full length costs ~a minute)
CPU_CHECK_STEPS = 10


# ----------------------------------------------------------------------------
# What is timed
# ----------------------------------------------------------------------------


class LayerBench:
    """One cell, shape and dtype: a torch.nn module and the inputs every implementation runs on."""

    def __init__(self, family: str, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0):
        T, B, I, H = shape
        self.family, self.shape, self.dtype, self.device = family, shape, dtype, device
        self.cell = BENCH_CELLS[family]
        torch.manual_seed(seed)
        module_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[family]
        self.module = module_class(I, H, device=device, dtype=dtype)
        self.params = list(self.module.parameters())  # weight_ih, weight_hh, bias_ih, bias_hh
        self.weights = LayerWeights(*self.params)
        self.x = torch.randn(T, B, I, device=device, dtype=dtype)
        self.x_train = self.x.clone().requires_grad_()
        self.grad_out = torch.randn(T, B, H, device=device, dtype=dtype)

    def forward(self, impl: str, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        if impl == TORCH:
            return lambda: self.module(x)[0]
        return lambda: functional.layer(self.cell, x, None, None, self.weights, backend=impl).out

    def call(self, impl: str, mode: str) -> Callable[[], Any]:
        """The timed call: a no-grad forward, or forward + gradients of the input and every weight."""
        if mode == "inference":
            forward = self.forward(impl, self.x)

            def infer():
                with torch.no_grad():
                    return forward()

            return infer
        forward = self.forward(impl, self.x_train)
        inputs = [self.x_train, *self.params]
        return lambda: torch.autograd.grad(forward(), inputs, self.grad_out)

    def unsupported(self, impl: str) -> Optional[str]:
        if impl == TORCH:
            return None
        return backends.get(impl).unsupported(self.cell, self.x, self.weights)

    def memory(self, impl: str, mode: str) -> tuple:
        """(bytes, kind): CUDA peak allocation, or on CPU the activations saved for training."""
        if self.device.type == "cuda":
            return cuda_peak_bytes(self.call(impl, mode)), "peak CUDA allocation"
        if mode == "training":
            exclude = storage_ptrs([self.x_train, *self.params])
            return saved_activation_bytes(self.forward(impl, self.x_train), exclude), "saved activations (training)"
        return None, None


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedrnn-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"directory for JSON/CSV/markdown/PNG (default {DEFAULT_OUT})")
    parser.add_argument("--cell", type=check.comma_list, default=list(BENCH_CELLS),
                        help="comma-separated cells: lstm, gru, rnn (default: all three)")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="PRESET|T,B,I,H",
                        help=f"presets ({', '.join(PRESETS)}) or explicit T,B,I,H, or none for no layer group "
                             "(default: cpu on CPU, gpu on CUDA; quick with --quick)")
    check.add_arguments(parser)  # --backends, --dtype, --device, --register, --quick
    parser.add_argument("--check-only", action="store_true",
                        help="run the correctness grid of python -m fusedrnn.check and stop")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    parser.add_argument("--check-steps", type=int, default=None, metavar="T",
                        help="check the benchmark shapes on their first T steps only (default: "
                             f"{CPU_CHECK_STEPS} on CPU, where torch.nn in float64 is slow; all steps on CUDA; 0: all)")
    parser.add_argument("--overhead", default=",".join(overhead.DEFAULT_FAMILIES), metavar="FAMILIES|none",
                        help="the per-call overhead group (a cell step, a 2-layer stack on one step, an attention "
                             "decoder; float32, backend auto, whatever --shapes/--dtype/--backends say) for these "
                             "comma-separated families, or none (default: "
                             f"{','.join(overhead.DEFAULT_FAMILIES)})")
    parser.add_argument("--groups", default=",".join(DEFAULT_GROUPS), metavar="GROUPS|all",
                        help="comma-separated groups to run: layers (the layer groups of --shapes), overhead (the "
                             "per-call overhead group), bf16 (bfloat16 against torch.nn bf16 at the cpu shapes, "
                             "LSTM and GRU), streaming (B=1, T=100 layer and cell-step latency, LSTM and GRU), "
                             "bidir (a 2-layer bidirectional LSTM); all for every one (default: "
                             f"{','.join(DEFAULT_GROUPS)}; --cell filters the families of every group)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, here "
                                                                  f"{torch.get_num_threads()})")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of repeats per measurement at least (default 0.3 CPU, 0.1 GPU, 0.02 quick)")
    parser.add_argument("--max-time", type=float, default=None,
                        help="seconds per measurement at most on CPU (default 2; 0.2 quick)")
    return parser


def parse_groups(text: str) -> List[str]:
    """``--groups``' value: comma-separated names of :data:`GROUPS`, or ``all``."""
    if text.strip() == "all":
        return list(GROUPS)
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"--groups takes 'all' or comma-separated names of {', '.join(GROUPS)}; got {text!r}")
    return groups


def _default_dtypes(device: torch.device) -> List[str]:
    return ["float16", "bfloat16"] if device.type == "cuda" else ["float32"]


def choose_backends(requested: Optional[Sequence[str]], device: torch.device, quick: bool) -> List[str]:
    """The backends to time: those asked for (each must be runnable), else every suitable available one."""
    if requested is None:
        return [n for n in backends.available()
                if (n, device.type) not in NOT_TIMED and (quick or n not in SLOW)]
    chosen = []
    for name in requested:
        if name not in backends.names():
            raise ValueError(f"unknown backend {name!r}; known: {backends.names()}")
        why = backends.unavailable_reason(name) or NOT_TIMED.get((name, device.type))
        if why is not None:
            raise ValueError(f"backend {name!r} cannot be benchmarked here: {why}")
        chosen.append(name)
    return chosen


def check_shapes(s: "Settings") -> tuple:
    """Every timed backend against torch.nn (float64) on the benchmark shapes.

    Returns the Report and the set of ``(backend, cell, shape, dtype)`` that
    failed: those are not timed (the others still are).  The sequence is cut
    to ``s.check_steps`` steps (when set): a kernel's code path follows B, I
    and H, while T only repeats the step, and torch.nn in float64 at full
    length would take most of the CPU run's time budget.
    """
    checker = testing.Checker(s.device)
    jobs = [(f, shape, d, n) for f in s.families for shape in s.shapes for d in s.dtypes for n in s.backends]
    outcomes, failed = [], set()
    with progress(len(jobs), "checking against torch.nn") as advance:
        for family, shape, dtype, name in jobs:
            steps = min(shape.T, s.check_steps) if s.check_steps else shape.T
            case = testing.Case(CHECK_VARIANTS[family], shape._replace(T=steps), "padded")
            # at benchmark lengths torch.nn's own float32 error can pass 1e-5: it sets the bar (2x rule)
            outcome = checker.check(name, case, dtype, oracles=("torch.nn",), baseline="torch.nn")
            outcomes.append(outcome)
            if not outcome.passed:
                failed.add((name, family, shape, dtype))
            advance(f"{name} {family} {shape.label} {dtype_name(dtype)}")
    return testing.Report(outcomes, str(s.device)), failed


def run_benchmarks(s: "Settings", failed: set) -> List[dict]:
    """Time every implementation; rows in table order: per group torch.nn, the backends, then the matmul."""
    impls = [TORCH] + s.backends
    results: List[dict] = []
    total = len(s.families) * len(s.shapes) * len(s.dtypes) * (len(impls) * len(MODES) + 1)
    with progress(total, "timing") as advance:
        for family, shape, dtype in itertools.product(s.families, s.shapes, s.dtypes):
            bench = LayerBench(family, shape, dtype, s.device)
            label = f"{family} {shape.label} {dtype_name(dtype)}"
            fwd_flops = forward_flops(bench.cell, shape)
            T, B, I, H = shape  # one product with the forward's FLOPs: what the layer would reach at GEMM speed
            gemm_gflops, gemm = matmul_gflops(T * B, I + H, bench.cell.gates * H, dtype, s.device, s.threads,
                                              s.min_time, s.max_time)
            advance(f"matmul {label}")
            for mode in MODES:
                flops = fwd_flops * (3 if mode == "training" else 1)
                group = measure_group(bench, impls, mode, flops, failed, s)
                for impl in impls:
                    advance(f"{impl} {label} {mode}")
                for row in group:
                    if row["gflops"] is not None:
                        row["matmul_fraction"] = row["gflops"] / gemm_gflops
                results += group
            results.append(result_row(bench, "inference", MATMUL, matmul_fraction=1.0,
                                      **timed_fields(gemm, fwd_flops)))
            del bench  # free the problem before building the next (GiBs on GPU at the large shapes)
    return results


def write_outputs(out_dir: str, payload: dict, results: List[dict]) -> Dict[str, Optional[str]]:
    """JSON, CSV, markdown and PNG into ``out_dir``; returns the paths (PNG None without matplotlib)."""
    from .plot import plot_speedups  # matplotlib only when writing

    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"bench-{payload['machine']['device'].split(':')[0]}-{payload['timestamp']}")
    paths = {"json": stem + ".json", "csv": stem + ".csv", "markdown": stem + ".md"}
    write_json(paths["json"], payload)
    write_csv(paths["csv"], results, payload)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(results, payload) + overhead.markdown(payload.get("overhead", []))
                + "".join(EXTRA_GROUPS[name].markdown(rows) for name, rows in payload.get("groups", {}).items()))
    m = payload["machine"]
    title = f"fusedrnn vs torch.nn: {m['gpu'] or m['cpu_model']}, {threads_text(m['torch_threads'])}"
    paths["png"] = plot_speedups(results, stem + ".png", title)
    return paths


@dataclass
class Settings:
    """What a run measures, from the command line (validated)."""

    device: torch.device
    families: List[str]
    shapes: List[Shape]
    dtypes: List[torch.dtype]
    backends: Optional[List[str]]  # None with --check-only
    threads: int
    check_steps: int  # 0: the whole sequence
    overhead: List[str]  # families of the per-call overhead group (none: [])
    groups: List[str]  # the groups run (GROUPS)
    min_time: float
    max_time: float
    command: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, argv: Sequence[str]) -> "Settings":
        """Raises ValueError naming the bad argument."""
        device = torch.device(args.device) if args.device else testing.default_device()
        check.register_backends(args.register)
        for family in args.cell:
            if family not in BENCH_CELLS:
                raise ValueError(f"--cell takes {', '.join(BENCH_CELLS)}; got {family!r}")
        if args.threads is not None and args.threads < 1:
            raise ValueError("--threads must be at least 1")
        if args.check_steps is not None and args.check_steps < 0:
            raise ValueError("--check-steps must be 0 (all steps) or positive")
        quick, gpu = args.quick, device.type == "cuda"
        groups = parse_groups(args.groups)
        shapes = parse_shapes(args.shapes or ["quick" if quick else DEFAULT_PRESET[device.type]])
        return cls(
            device=device,
            families=args.cell,
            shapes=shapes if "layers" in groups else [],  # a group not run is an empty one
            dtypes=[testing.as_dtype(d) for d in (args.dtype or _default_dtypes(device))],
            backends=None if args.check_only else choose_backends(args.backends, device, quick),
            threads=args.threads or torch.get_num_threads(),
            check_steps=args.check_steps if args.check_steps is not None else (0 if gpu else CPU_CHECK_STEPS),
            overhead=overhead.parse_families(args.overhead) if "overhead" in groups else [],
            groups=groups,
            min_time=args.min_time if args.min_time is not None else (0.02 if quick else 0.1 if gpu else 0.3),
            max_time=args.max_time if args.max_time is not None else (0.2 if quick else 2.0),
            command=" ".join(["python -m fusedrnn.bench", *(shlex.quote(a) for a in argv)]),
        )

    def to_dict(self) -> dict:
        return {"command": self.command, "cells": self.families, "shapes": [list(s) for s in self.shapes],
                "dtypes": [dtype_name(d) for d in self.dtypes], "backends": self.backends, "threads": self.threads,
                "check_steps": self.check_steps, "overhead": self.overhead, "groups": self.groups,
                "min_time_s": self.min_time, "max_time_s": self.max_time, "device": str(self.device)}


def run_extra_groups(s: Settings, ceilings: dict, quick: bool) -> Dict[str, List[dict]]:
    """The chosen groups of :data:`EXTRA_GROUPS`, in that order: name -> rows (none for a group --cell empties)."""
    out: Dict[str, List[dict]] = {}
    for name, group in EXTRA_GROUPS.items():
        families = [f for f in s.families if f in group.FAMILIES]
        if name not in s.groups or not families:
            continue
        with progress(group.count(families, quick), f"timing the {name} group") as advance:
            out[name] = group.run(families, s, ceilings, quick, advance)
    return out


def run_check_only(args: argparse.Namespace, settings: Settings, stamp: str) -> int:
    """--check-only: the correctness grid of ``python -m fusedrnn.check`` for the chosen cells."""
    variants = [v for v, spec in testing.VARIANTS.items() if spec.cell.family in settings.families]
    grid = dict(shapes=list(check.QUICK_SHAPES), options=list(check.QUICK_OPTIONS)) if args.quick else {}
    if args.shapes:
        grid["shapes"] = settings.shapes
    dtypes = settings.dtypes if args.dtype else (list(check.QUICK_DTYPES) if args.quick else None)
    os.makedirs(args.out, exist_ok=True)
    return check.run(args.backends, dtypes, settings.device, variants,
                     json_path=os.path.join(args.out, f"check-{settings.device.type}-{stamp}.json"), **grid)


def run_bench(args: argparse.Namespace, s: Settings, stamp: str) -> int:
    """Check, time, report; the exit status."""
    started = time.perf_counter()
    machine = env.machine(s.device, s.threads)
    warning = env.contention_warning(machine) if s.device.type == "cpu" else None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    status = ("skipped (--no-check)" if args.no_check else "no backend to check" if not s.backends
              else "no layer group to check (the other groups compare their own forwards)")
    failed, check_report = set(), None
    if not args.no_check and s.backends and s.shapes:
        check_report, failed = check_shapes(s)
        status = "passed" if check_report.passed else f"FAILED: {', '.join(check_report.failed_backends())}"

    n = peak_matmul_size(s.device, args.quick)
    peak = {dtype_name(d): peaks.matmul_peak(n, d, s.device, s.threads, s.min_time, s.max_time) for d in s.dtypes}
    results = run_benchmarks(s, failed)
    overhead_rows: List[dict] = []
    if s.overhead:
        with progress(overhead.count(s.overhead), "timing the per-call overhead") as advance:
            overhead_rows = overhead.run(s.overhead, s, advance)
    ceilings = peaks.measure(s, args.quick, known=peak) if NEEDS_PEAKS & set(s.groups) else {}
    group_rows = run_extra_groups(s, ceilings, args.quick)

    payload = {
        "timestamp": stamp, "machine": machine, "warning": warning, "versions": env.versions(),
        "settings": {**s.to_dict(), "quick": args.quick},
        "peak_matmul": peak,
        "check": {"status": status, **(check_report.to_dict() if check_report is not None else {})},
        "results": results,
        "overhead": overhead_rows,
        "peaks": ceilings,
        "groups": group_rows,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if check_report is not None:
        check.render(check_report)
    where = f"{machine['gpu'] or machine['cpu_model']} ({threads_text(s.threads)})"
    if results:
        print_results(results, peak, f"fusedrnn vs torch.nn on {where}")
    if overhead_rows:
        overhead.print_rows(overhead_rows, f"per-call overhead: fusedrnn vs torch.nn on {where}")
    if ceilings:
        print(peaks.describe(ceilings))
    for name, rows in group_rows.items():
        EXTRA_GROUPS[name].print_rows(rows, f"{name}: fusedrnn vs torch.nn on {where}")
    for kind, path in write_outputs(args.out, payload, results).items():
        print(f"wrote {path}" if path else f"no {kind}: matplotlib is not installed")
    every_row = results + overhead_rows + [r for rows in group_rows.values() for r in rows]
    errors = [r for r in every_row if r["status"].startswith(("error", "FAILED"))]
    if failed or errors:
        culprits = sorted({name for name, *_ in failed} | {r["impl"] for r in errors})
        print(f"fusedrnn-bench: FAILED: backend(s) {', '.join(culprits)} disagree with torch.nn or did not run",
              file=sys.stderr)
        return 1
    print(f"fusedrnn-bench: done in {payload['wall_time_s']} s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args, argv)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(settings.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.check_only:
        return run_check_only(args, settings, stamp)
    return run_bench(args, settings, stamp)

