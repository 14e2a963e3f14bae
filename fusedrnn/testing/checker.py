"""Checking backends: the Checker, its outcomes and report, and the one-call comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .. import backends
from ..backends.base import LayerWeights
from .grid import Case, DEFAULT_SHAPES, MODULE_VARIANTS, ModuleCase, Shape, VARIANTS, cases
from .runs import (INPUTS, LayerFn, Problem, QUANTITIES, Results, backend_layer, make_module_problem, make_problem,
                   modules_available, quantity_of, reference_layer, run_layer, run_module, run_torch)
from .tolerance import LOW_PRECISION, dtype_name, error, tolerance, tolerance_rule

# ----------------------------------------------------------------------------
# Checking backends
# ----------------------------------------------------------------------------

ORACLES = ("reference", "torch.nn")


@dataclass
class ErrorRow:
    """One quantity of one case against one oracle."""

    quantity: str
    oracle: str
    max_abs: float
    rel: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.rel <= self.tolerance

    def __str__(self) -> str:
        return (f"{self.quantity} vs {self.oracle}: rel {self.rel:.3g} (max_abs {self.max_abs:.3g}) "
                f"{'<=' if self.passed else '>'} tolerance {self.tolerance:.3g}")


def error_row(quantity: str, oracle: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
              baselines: Sequence[torch.Tensor] = ()) -> ErrorRow:
    """``actual`` against the oracle's ``expected`` under the rule for ``dtype`` (:func:`tolerance`);
    ``baselines``: the same computation in ``dtype`` by other implementations; the smallest of their
    errors against the same oracle sets the 2x bound."""
    max_abs, rel = error(actual, expected)
    base_rel = min((error(b, expected)[1] for b in baselines), default=None)
    return ErrorRow(quantity, oracle, max_abs, rel, tolerance(dtype, base_rel))


#: a baseline of the 2x rule: "reference" (the reference backend), "torch.nn", or a layer function
Baseline = Union[str, LayerFn]


def baseline_name(baseline: Baseline) -> str:
    return baseline if isinstance(baseline, str) else getattr(baseline, "__name__", type(baseline).__name__)


@dataclass
class CaseOutcome:
    """A backend on one case in one dtype: the error rows, or why it was skipped or failed to run."""

    backend: str
    case: "Case | ModuleCase"
    dtype: torch.dtype
    rows: List[ErrorRow] = field(default_factory=list)
    skipped: Optional[str] = None
    crashed: Optional[str] = None
    rule: str = ""

    @property
    def passed(self) -> bool:
        return self.crashed is None and all(r.passed for r in self.rows)

    def assert_passed(self) -> None:
        """Raise AssertionError unless the case ran, compared outputs and gradients, and every row is
        within its tolerance (a skip is a failure here: a test asks for a case the backend must run)."""
        problems = [f"skipped: {self.skipped}"] if self.skipped is not None else []
        problems += [f"crashed: {self.crashed}"] if self.crashed is not None else []
        problems += [str(r) for r in self.rows if not r.passed]
        quantities = {r.quantity for r in self.rows}
        if not problems and not ({"out", "h_n"} <= quantities and any(q.startswith("grad_") for q in quantities)):
            problems.append(f"nothing compared but {sorted(quantities)}")
        if problems:
            raise AssertionError(f"{self.backend} on {self.case.id} in {dtype_name(self.dtype)} ({self.rule}): "
                                 + "; ".join(problems))

    def to_dict(self) -> dict:
        return {
            "backend": self.backend, "case": self.case.id, "variant": self.case.variant,
            "option": self.case.option, "shape": list(self.case.shape), "dtype": dtype_name(self.dtype),
            "skipped": self.skipped, "crashed": self.crashed, "tolerance_rule": self.rule, "passed": self.passed,
            "errors": [{"quantity": r.quantity, "oracle": r.oracle, "max_abs": r.max_abs, "rel": r.rel,
                        "tolerance": r.tolerance, "passed": r.passed} for r in self.rows],
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtypes(device) -> List[torch.dtype]:
    """float64, float32 and the 16-bit formats the device is meant for (bfloat16 on CPU)."""
    if torch.device(device).type == "cuda":
        return [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    return [torch.float64, torch.float32, torch.bfloat16]


class Checker:
    """Runs backends on cases and compares them with the oracles, caching oracle and baseline runs."""

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else default_device()
        self._cache: Dict[tuple, Optional[Results]] = {}

    def problem(self, case, dtype: torch.dtype) -> Problem:
        make = make_module_problem if isinstance(case, ModuleCase) else make_problem
        return self._cached(("problem", case, dtype), lambda: make(case, dtype))

    def _run(self, case, dtype: torch.dtype, implementation: str, layer: Optional[LayerFn] = None) -> Optional[Results]:
        """Results of ``"oracle:reference"``, ``"torch.nn"`` or a fusedrnn backend name, in ``dtype``
        (``layer``: this layer function stands for the backend's)."""
        problem = self.problem(case, dtype)
        if layer is not None:
            return run_layer(problem, layer, dtype, self.device)
        if isinstance(case, ModuleCase):
            if implementation == "oracle:reference":
                return None  # the whole-module check has torch.nn as its oracle
            if implementation == "torch.nn":
                return run_module(problem, case.build(nn), dtype, self.device)
            import fusedrnn

            return run_module(problem, case.build(fusedrnn, backend=implementation), dtype, self.device)
        if implementation == "oracle:reference":
            return run_layer(problem, reference_layer, dtype, self.device)
        if implementation == "torch.nn":
            return run_torch(problem, dtype, self.device)
        return run_layer(problem, backend_layer(implementation), dtype, self.device)

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def oracle(self, case, dtype: torch.dtype, name: str) -> Optional[Results]:
        """Float64 results of oracle ``name`` on the case's inputs rounded to ``dtype`` (None: no such oracle)."""
        if name not in ORACLES:
            raise ValueError(f"unknown oracle {name!r}; expected one of {ORACLES}")
        key = "oracle:reference" if name == "reference" else name
        return self._cached(("oracle", case, dtype, name), lambda: self._run(case, torch.float64, key))

    def baseline(self, case, dtype: torch.dtype, name: Baseline) -> Optional[Results]:
        """Results of a same-dtype baseline computation: the reference backend, torch.nn (None where torch.nn
        lacks the cell) or a layer function (cached per function object)."""
        if isinstance(name, str) and name not in ("reference", "torch.nn"):
            raise ValueError(f"unknown baseline {name!r}; expected 'reference', 'torch.nn' or a layer function")
        layer = None if isinstance(name, str) else name
        return self._cached(("baseline", case, dtype, name), lambda: self._run(case, dtype, baseline_name(name), layer))

    def unsupported(self, backend: str, case, dtype: torch.dtype) -> Optional[str]:
        """Why ``backend`` cannot run the case in ``dtype`` on this device, or None."""
        why = backends.unavailable_reason(backend)
        if why is not None:
            return why
        if not backends.get(backend).runs(case.cell):  # a cell on the reference backend only, so far
            return f"it has no kernels for the {case.cell} cell"
        if isinstance(case, ModuleCase):
            case = case.layer_case
        problem = self.problem(case, dtype)
        tensors = {k: v.to(self.device, dtype) for k, v in problem.inputs.items()}
        weights = LayerWeights(*(tensors.get(n) for n in INPUTS[3:]))
        x = tensors["x"] if problem.lengths is None else tensors["x"].flatten(0, 1)
        return backends.get(backend).unsupported(case.cell, x, weights)

    def check(self, backend: str, case, dtype: torch.dtype, oracles: Sequence[str] = ORACLES,
              baseline: Union[None, Baseline, Sequence[Baseline]] = "auto",
              layer: Optional[LayerFn] = None) -> CaseOutcome:
        """Compare ``backend`` with each oracle on ``case`` in ``dtype``.

        ``baseline`` names the same-dtype computation the 2x rule measures
        against: ``"auto"`` is the reference backend for 16-bit dtypes and none
        otherwise; ``"torch.nn"`` suits long sequences where float32 rounding
        in torch.nn itself exceeds 1e-5 (``"reference"`` gives float32 the same
        allowance against the reference backend).  A layer function computing
        in the dtype may be a baseline too, and with several baselines the
        bound takes the smallest of their errors (the tightest).  ``layer``: a
        layer function (:func:`run_layer`'s ``layer_fn``, e.g. a backend's ops
        called directly with a forced strategy) run in place of the backend's,
        on the tensors the backend accepts; a layer case only.
        """
        if baseline == "auto":
            baseline = "reference" if dtype in LOW_PRECISION else None
        baselines = [] if baseline is None else list(baseline) if isinstance(baseline, (list, tuple)) else [baseline]
        if isinstance(case, ModuleCase) and (layer is not None or not all(isinstance(b, str) for b in baselines)):
            raise ValueError("a layer function runs layer cases, not whole modules")
        names = [baseline_name(b) for b in baselines]
        label = f"min({', '.join(names)})" if len(names) > 1 else (names or [None])[0]
        outcome = CaseOutcome(backend, case, dtype, rule=tolerance_rule(dtype, label))
        if backend not in backends.names():
            raise ValueError(f"unknown fusedrnn backend {backend!r}; expected one of {backends.names()}")
        outcome.skipped = self.unsupported(backend, case, dtype)
        if outcome.skipped is not None:
            return outcome
        try:
            actual = self._run(case, dtype, backend, layer)
        except Exception as exc:  # a crashing backend is a failure of the check, not of the checker
            outcome.crashed = f"{type(exc).__name__}: {exc}"
            return outcome
        # torch.nn lacks some variants: the reference backend stands in there
        bases = [self.baseline(case, dtype, b) or self.baseline(case, dtype, "reference") for b in baselines]
        for oracle_name in oracles:
            expected = self.oracle(case, dtype, oracle_name)
            if expected is None:  # torch.nn has no such cell
                continue
            worst: Dict[str, ErrorRow] = {}  # per quantity, the tensor nearest its bound (module parameters)
            for name in expected:
                row = error_row(quantity_of(name), oracle_name, actual[name], expected[name], dtype,
                                [base[name] for base in bases])
                held = worst.get(row.quantity)
                if held is None or row.rel / row.tolerance > held.rel / held.tolerance:
                    worst[row.quantity] = row
            order = {q: i for i, q in enumerate(QUANTITIES)}
            outcome.rows += sorted(worst.values(), key=lambda r: order.get(r.quantity, len(order)))
        return outcome


@dataclass
class Report:
    """The outcomes of a comparison, with the summary the check prints."""

    outcomes: List[CaseOutcome]
    device: str

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def checked(self) -> List[CaseOutcome]:
        return [o for o in self.outcomes if o.skipped is None]

    def failures(self) -> List[CaseOutcome]:
        return [o for o in self.outcomes if not o.passed]

    def failed_backends(self) -> List[str]:
        return sorted({o.backend for o in self.failures()})

    def summary(self) -> List[dict]:
        """Worst error per (backend, dtype, quantity), over all cases and oracles."""
        groups: Dict[tuple, dict] = {}
        for o in self.checked:
            if o.crashed is not None:
                key = (o.backend, dtype_name(o.dtype), "(run)")
                g = groups.setdefault(key, _summary_entry(key, o.rule))
                g["cases"] += 1
                g["failed"] += 1
                g["worst_case"] = g["worst_case"] or o.case.id
                g["note"] = o.crashed
                continue
            failed = {r.quantity for r in o.rows if not r.passed}
            for quantity in dict.fromkeys(r.quantity for r in o.rows):  # each quantity once per case
                g = groups.setdefault((o.backend, dtype_name(o.dtype), quantity),
                                      _summary_entry((o.backend, dtype_name(o.dtype), quantity), o.rule))
                g["cases"] += 1
                g["failed"] += quantity in failed
            for r in o.rows:
                g = groups[(o.backend, dtype_name(o.dtype), r.quantity)]
                g["max_abs"] = max(g["max_abs"], r.max_abs)
                g[f"rel_{r.oracle}"] = max(g.get(f"rel_{r.oracle}") or 0.0, r.rel)
                margin = r.rel / r.tolerance if r.tolerance > 0 else float("inf")
                if margin >= g["worst_margin"]:
                    g["worst_margin"], g["worst_case"] = margin, o.case.id
        order = {q: i for i, q in enumerate(QUANTITIES + ("(run)",))}
        return sorted(groups.values(), key=lambda g: (g["backend"], g["dtype"], order.get(g["quantity"], 99)))

    def skips(self) -> Dict[tuple, int]:
        """(backend, dtype, reason) -> number of cases skipped."""
        counts: Dict[tuple, int] = {}
        for o in self.outcomes:
            if o.skipped is not None:
                key = (o.backend, dtype_name(o.dtype), o.skipped)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {"device": self.device, "passed": self.passed, "failed_backends": self.failed_backends(),
                "summary": self.summary(), "outcomes": [o.to_dict() for o in self.outcomes]}

    def failure_lines(self, limit: int = 20) -> List[str]:
        lines = []
        for o in self.failures():
            if o.crashed is not None:
                lines.append(f"{o.backend} {dtype_name(o.dtype)} {o.case.id}: crashed: {o.crashed}")
            for r in o.rows:
                if not r.passed:
                    lines.append(f"{o.backend} {dtype_name(o.dtype)} {o.case.id} {r.quantity} vs {r.oracle}: "
                                 f"rel {r.rel:.3g} > {r.tolerance:.3g} (max abs {r.max_abs:.3g})")
        if len(lines) > limit:
            lines = lines[:limit] + [f"({len(lines) - limit} more failures: see --verbose or --json)"]
        return lines

    def __str__(self) -> str:
        lines = [f"fusedrnn check on {self.device}: {len(self.checked)} runs, "
                 f"{len(self.outcomes) - len(self.checked)} skipped, "
                 f"{'PASSED' if self.passed else 'FAILED: ' + ', '.join(self.failed_backends())}"]
        for g in self.summary():
            rels = " ".join(f"rel({o})={g[f'rel_{o}']:.2e}" for o in ORACLES if g.get(f"rel_{o}") is not None)
            lines.append(f"  {g['backend']:>10} {g['dtype']:>8} {g['quantity']:<12} max_abs={g['max_abs']:.2e} "
                         f"{rels} tol={g['rule']} {'ok' if g['failed'] == 0 else 'FAIL'}")
        lines += ["  " + line for line in self.failure_lines()]
        return "\n".join(lines)


def _summary_entry(key: tuple, rule: str) -> dict:
    backend, dtype, quantity = key
    return {"backend": backend, "dtype": dtype, "quantity": quantity, "rule": rule, "cases": 0, "failed": 0,
            "max_abs": 0.0, "rel_reference": None, "rel_torch.nn": None, "worst_margin": -1.0,
            "worst_case": None, "note": None}


DTypeLike = Union[str, torch.dtype]


def as_dtype(dtype: DTypeLike) -> torch.dtype:
    """``torch.float32`` from ``"float32"``, ``"fp32"``, ``"bf16"``... or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32",
               "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(dtype, dtype)
    result = getattr(torch, name, None)
    if not isinstance(result, torch.dtype) or not result.is_floating_point:
        raise ValueError(f"unknown floating dtype {dtype!r}; expected float64, float32, float16 or bfloat16")
    return result


def module_cases(cells: Optional[Iterable[str]] = None, shapes: Optional[Iterable] = None) -> List[ModuleCase]:
    """Whole-module cases for the variants in ``cells`` that have one, over ``shapes``."""
    cells = list(cells) if cells is not None else list(VARIANTS)
    shapes = [Shape(*s) for s in shapes] if shapes is not None else list(DEFAULT_SHAPES)
    return [ModuleCase(v, s) for v in cells if v in MODULE_VARIANTS for s in shapes]


def grid(cells=None, shapes=None, options=None, modules: Optional[bool] = None) -> list:
    """The layer cases, then (``modules``: by default when fusedrnn has its modules) the module cases."""
    if modules is None:
        modules = modules_available()
    return cases(cells, shapes, options) + (module_cases(cells, shapes) if modules else [])


def compare_backends(names: Iterable[str], cells: Optional[Iterable[str]] = None,
                     shapes: Optional[Iterable] = None, options: Optional[Iterable[str]] = None,
                     dtypes: Optional[Iterable[DTypeLike]] = None, device=None,
                     progress: Optional[Callable[[CaseOutcome], None]] = None,
                     modules: Optional[bool] = None) -> Report:
    """Every backend in ``names`` on every case of the grid (:func:`grid`), in every dtype."""
    checker = Checker(device)
    dtypes = [as_dtype(d) for d in dtypes] if dtypes is not None else default_dtypes(checker.device)
    grid_cases = grid(cells, shapes, options, modules)
    outcomes = []
    for name in names:
        for dtype in dtypes:
            for case in grid_cases:
                outcome = checker.check(name, case, dtype)
                outcomes.append(outcome)
                if progress is not None:
                    progress(outcome)
    return Report(outcomes, str(checker.device))


def compare_backend(name: str, **kwargs) -> Report:
    """:func:`compare_backends` for one backend (same keyword arguments)."""
    return compare_backends([name], **kwargs)


def assert_close_to_reference(name: str, **kwargs) -> Report:
    """Raise AssertionError naming every failure of backend ``name``, or if nothing could run."""
    report = compare_backend(name, **kwargs)
    if not report.passed:
        raise AssertionError(str(report))
    if not report.checked:
        reasons = sorted({o.skipped for o in report.outcomes})
        raise AssertionError(f"backend {name!r} ran no case: {'; '.join(reasons)}")
    return report
