"""``python -m fusedrnn.check``: every available backend against the float64 reference and torch.nn.

Runs the grid of :mod:`fusedrnn.testing` (cell variants x layout options x odd
shapes x dtypes), forward and backward, and prints the worst max-abs and
relative error per output and per gradient with pass/fail against the
documented tolerances (see :mod:`fusedrnn.testing`).  Exit status 0 when
everything passes, 1 on any failure (or when a backend named with
``--backends`` cannot run here), 2 on bad arguments.

Examples::

    python -m fusedrnn.check                         # all available backends, full grid
    python -m fusedrnn.check --backends cpu --dtype float32 --quick
    python -m fusedrnn.check --register mine=my_pkg.backend:MyBackend --backends mine
    fusedrnn-bench --check-only                      # the same, from the benchmark command
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

from .. import backends, testing
from .console import print_table, progress

#: a small grid for a first look and for tests: one odd shape, the layouts that matter most
QUICK_SHAPES = (testing.Shape(5, 3, 3, 7),)
QUICK_OPTIONS = ("padded", "packed-reverse", "no-bias")
QUICK_DTYPES = ("float64", "float32")


def register_backends(specs: Sequence[str]) -> None:
    """``NAME=module:Class`` entries -> :func:`fusedrnn.backends.register`."""
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or ":" not in target or not name:
            raise ValueError(f"--register expects NAME=module:Class, got {spec!r}")
        backends.register(name, target)


def comma_list(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shape(text: str) -> testing.Shape:
    """``"7,5,3,37"`` -> Shape(T=7, B=5, I=3, H=37)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a shape is four positive integers T,B,I,H; got {text!r}")
    return testing.Shape(*values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's options (also used by ``fusedrnn-bench --check-only``)."""
    parser.add_argument("--backends", type=comma_list, default=None,
                        help="comma-separated backend names (default: every available backend)")
    parser.add_argument("--dtype", type=comma_list, default=None,
                        help="comma-separated dtypes (default: float64,float32,bfloat16 on CPU; "
                             "also float16 on CUDA)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--register", action="append", default=[], metavar="NAME=module:Class",
                        help="register an extra backend before checking (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small grid: shape {QUICK_SHAPES[0].label}, options {', '.join(QUICK_OPTIONS)}, "
                             f"dtypes {', '.join(QUICK_DTYPES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fusedrnn.check", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--cells", type=comma_list, default=None,
                        help=f"comma-separated cell variants (default: all of {', '.join(testing.VARIANTS)})")
    parser.add_argument("--options", type=comma_list, default=None,
                        help=f"comma-separated layout options (default: all of {', '.join(testing.OPTIONS)})")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=None, metavar="T,B,I,H",
                        help="shapes (default: " + ", ".join(",".join(map(str, s)) for s in testing.DEFAULT_SHAPES)
                             + ")")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every error figure to PATH")
    parser.add_argument("--verbose", action="store_true", help="print one line per case and quantity")
    return parser


def render(report: testing.Report, verbose: bool = False) -> None:
    """The summary table, the skips and the failures."""
    rows, styles = [], []
    for g in report.summary():
        rel = lambda oracle: "-" if g[f"rel_{oracle}"] is None else f"{g[f'rel_{oracle}']:.2e}"  # noqa: E731
        ok = g["failed"] == 0
        rows.append([g["backend"], g["dtype"], g["quantity"], f"{g['max_abs']:.2e}", rel("reference"),
                     rel("torch.nn"), g["rule"], f"{g['cases']}", g["worst_case"] or "-",
                     "pass" if ok else f"FAIL ({g['failed']})"])
        styles.append(None if ok else "bold red")
    print_table(
        f"fusedrnn check on {report.device}: max error over the grid (rel = max|err| / max|expected|)",
        ["backend", "dtype", "quantity", "max abs", "rel vs reference", "rel vs torch.nn", "tolerance",
         "cases", "worst case", "result"],
        rows, styles,
    )
    for (backend, dtype, reason), count in sorted(report.skips().items()):
        print(f"skipped: {backend} {dtype}: {count} cases: {reason}")
    if verbose:
        for o in report.checked:
            for r in o.rows:
                print(f"{o.backend} {testing.dtype_name(o.dtype)} {o.case.id} {r.quantity} vs {r.oracle}: "
                      f"abs {r.max_abs:.3g} rel {r.rel:.3g} tol {r.tolerance:.3g} {'ok' if r.passed else 'FAIL'}")
    for line in report.failure_lines():
        print(line if line.startswith("(") else f"FAIL {line}")
    verdict = "PASSED" if report.passed else f"FAILED: backend(s) {', '.join(report.failed_backends())}"
    print(f"fusedrnn check: {len(report.checked)} runs, {sum(report.skips().values())} skipped: {verdict}")


def run(backend_names: Optional[Sequence[str]] = None, dtypes: Optional[Sequence[str]] = None, device=None,
        cells: Optional[Sequence[str]] = None, shapes=None, options: Optional[Sequence[str]] = None,
        json_path: Optional[str] = None, verbose: bool = False) -> int:
    """Check, print, optionally write JSON; return the exit status."""
    explicit = backend_names is not None
    names = list(backend_names) if explicit else backends.available()
    unknown = [n for n in names if n not in backends.names()]
    if unknown:
        print(f"unknown backend(s) {unknown}; known: {backends.names()}", file=sys.stderr)
        return 2
    status = 0
    if explicit:  # a backend asked for by name and not runnable here is a failure, not a silent skip
        for n in names:
            why = backends.unavailable_reason(n)
            if why is not None:
                print(f"FAIL backend {n!r} is unavailable: {why}", file=sys.stderr)
                status = 1
    names = [n for n in names if backends.unavailable_reason(n) is None]
    checker_device = device if device is not None else testing.default_device()
    dtype_list = dtypes if dtypes is not None else testing.default_dtypes(checker_device)
    total = len(names) * len(dtype_list) * len(testing.grid(cells, shapes, options))
    with progress(total, "checking") as advance:
        report = testing.compare_backends(
            names, cells=cells, shapes=shapes, options=options, dtypes=dtype_list, device=checker_device,
            progress=lambda o: advance(f"{o.backend} {testing.dtype_name(o.dtype)} {o.case.id}"),
        )
    render(report, verbose)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {json_path}")
    if not report.passed:
        status = 1
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_backends(args.register)
        for name in args.cells or []:
            testing.Case(name, testing.DEFAULT_SHAPES[0])  # validates the name
        for name in args.options or []:
            testing.Case("lstm", testing.DEFAULT_SHAPES[0], name)
        dtypes = [testing.as_dtype(d) for d in args.dtype] if args.dtype else None
    except ValueError as exc:
        parser.error(str(exc))
    shapes, options = args.shapes, args.options
    if args.quick:
        shapes = shapes or list(QUICK_SHAPES)
        options = options or list(QUICK_OPTIONS)
        dtypes = dtypes or [testing.as_dtype(d) for d in QUICK_DTYPES]
    return run(args.backends, dtypes, args.device, args.cells, shapes, options, args.json, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
