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

Every step runs, whatever the previous ones gave, under its own timeout (``Step.cap_s``, cut so that the
steps after it keep their estimated time and the smoke run stays within ``SMOKE_BUDGET_S``; see
``gpu_validation.runner.allot``).  Without a CUDA device every GPU step is reported as skipped, with the
reason, and nothing is built.  The report (report.md, report.json), every step's output (steps.log) and
the benchmark's own files go into ``--out``, else ``$OUT``, else benchmarks/results/gpu-<plan>-<time>/:
few files, because some ways of borrowing a GPU copy back only a handful.

Exit status: 0 every step that ran passed; 1 a step failed or timed out; 3 no CUDA device (the GPU
steps were skipped); 130 interrupted.

This file is the command line; the parts are in benchmarks/gpu_validation/: ``steps.py`` (what runs, and
the two plans), ``runner.py`` (running steps under their timeouts and the budget), ``card.py`` (the card)
and ``report.py`` (the verdict and the report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# the package beside this script: runpy (tests/test_gpu_smoke.py) and an import need not put this folder on sys.path
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_validation import REPO  # noqa: E402
from gpu_validation.card import CARD_PREFIX, card_step, card_title, read_card, versions_line  # noqa: E402
from gpu_validation.report import EXIT_INTERRUPTED, verdict, write_report  # noqa: E402
from gpu_validation.runner import Result, Runner  # noqa: E402
from gpu_validation.steps import SMOKE_BUDGET_S, Context, full_plan, smoke_plan  # noqa: E402


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
