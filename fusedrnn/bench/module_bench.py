"""Benches of whole modules (fusedrnn's drop-in layers and cells against torch.nn's), and the loop that times them.

The bf16, streaming and stack groups (:mod:`~fusedrnn.bench.bf16`, :mod:`~fusedrnn.bench.streaming`,
:mod:`~fusedrnn.bench.stacks`) time what a user runs: a module's call, not one layer-direction.
Each case is a :class:`ModuleBench` (a bench of :func:`fusedrnn.bench.rounds.measure_group`): one
:class:`Subject` per implementation (a module, its input and initial state, how one call runs it),
checked before timing (:meth:`ModuleBench.failures`: an implementation that disagrees is reported,
not timed), then timed in the rounds every group uses by :func:`time_cases`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..testing import Shape
from .rounds import measure_group

TORCH = "torch.nn"
#: the name fusedrnn's rows carry (its modules with backend "auto": what a user gets)
FUSEDRNN = "fusedrnn"
#: float32 outputs of fusedrnn and torch.nn on the same weights agree to far better than this (a 100-step
#: sequence included); the float64 check of the layer groups covers the arithmetic itself
FLOAT32_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@dataclass(frozen=True)
class Case:
    kind: str  # what a group calls its cases (cell, layer, step, sequence, bf16, ...)
    family: str
    shape: Shape  # T, B, I, H (T: the steps one timed call runs)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.family} B={self.shape.B} H={self.shape.H}"


def whole_sequence(module: nn.Module, x, state) -> Tensor:
    """A layer's call on the whole sequence: its output ``[T, B, H]``."""
    return module(x, state)[0]


def final_hidden(state) -> Tensor:
    return state[0] if isinstance(state, tuple) else state


@dataclass
class Subject:
    """One implementation of a case: its module, input, initial state, and what one call runs
    (``run(module, x, state)``, returning the tensor compared and differentiated)."""

    module: nn.Module
    x: Any  # a tensor, or whatever ``run`` takes (the steps of a sequence, unbound once)
    state: Any = None
    run: Callable[[nn.Module, Any, Any], Tensor] = whole_sequence
    grad_out: Optional[Tensor] = None  # the upstream gradient of training (default: ones, i.e. a sum)

    def output(self, x=None) -> Tensor:
        return self.run(self.module, self.x if x is None else x, self.state)


def forward_backward(subject: Subject, x: Tensor) -> List[Tensor]:
    """``subject``'s output on ``x`` (a leaf that requires grad), then the gradients of ``x`` and every
    parameter for the subject's upstream gradient."""
    out = subject.output(x)
    grad_out = torch.ones_like(out) if subject.grad_out is None else subject.grad_out
    return [out.detach(), *torch.autograd.grad(out, [x, *subject.module.parameters()], grad_out)]


class ModuleBench:
    """One case: a :class:`Subject` per implementation, the first torch.nn's (the ratios' base)."""

    #: modes a case is timed in (the streaming group: inference only)
    modes: Sequence[str] = ("inference", "training")

    def __init__(self, case: Case, dtype: torch.dtype, subjects: Dict[str, Subject]):
        self.case, self.family, self.shape, self.dtype = case, case.family, case.shape, dtype
        self.subjects = subjects
        self.impls = list(subjects)
        self._x_train: Dict[str, Tensor] = {}

    def x_train(self, impl: str) -> Tensor:
        """The impl's input as a leaf that requires grad (made once: its gradient is part of training)."""
        if impl not in self._x_train:
            self._x_train[impl] = self.subjects[impl].x.detach().clone().requires_grad_()
        return self._x_train[impl]

    def gradients(self, impl: str) -> List[Tensor]:
        """What training computes: the output, then the gradients of the input and every parameter."""
        return forward_backward(self.subjects[impl], self.x_train(impl))

    def call(self, impl: str, mode: str) -> Callable[[], Any]:
        """The timed call: a no-grad forward, or forward + gradients of the input and every parameter."""
        subject = self.subjects[impl]
        if mode == "inference":
            def infer():
                with torch.no_grad():
                    return subject.output()

            return infer
        self.x_train(impl)
        return lambda: self.gradients(impl)

    def unsupported(self, impl: str) -> Optional[str]:
        return None

    def memory(self, impl: str, mode: str) -> tuple:
        return None, None

    def flops(self, mode: str) -> float:
        """FLOPs of one timed call in ``mode`` (0: not counted)."""
        return 0.0

    def disagreement(self, impl: str, tolerance: dict = FLOAT32_TOLERANCE) -> Optional[str]:
        """None when ``impl``'s no-grad output matches torch.nn's on the same inputs, else what differs."""
        with torch.no_grad():
            expected, actual = self.subjects[TORCH].output(), self.subjects[impl].output()
        try:
            torch.testing.assert_close(actual, expected, **tolerance)
        except AssertionError as exc:
            return str(exc).splitlines()[0]
        return None

    def failures(self) -> Dict[str, str]:
        """impl -> why it is not timed; by default each non-torch.nn subject must agree with torch.nn."""
        checked = {impl: self.disagreement(impl) for impl in self.impls if impl != TORCH}
        return {impl: why for impl, why in checked.items() if why}

    def annotate(self, group: List[dict], mode: str) -> None:
        """Add a group's own columns to the rows of one mode (torch.nn's row first)."""


def time_cases(cases: Sequence[Case], build: Callable[[Case], ModuleBench], s,
               advance: Callable[[str], None] = lambda label: None) -> List[dict]:
    """Each case built, checked, then timed in each of its modes on the run's settings ``s``: the rows of
    :func:`fusedrnn.bench.rounds.result_row` plus ``case`` (and what the bench's ``annotate`` adds)."""
    rows: List[dict] = []
    for case in cases:
        bench = build(case)
        failures = bench.failures()
        failed = {(impl, bench.family, bench.shape, bench.dtype) for impl in failures}
        for mode in bench.modes:
            group = measure_group(bench, bench.impls, mode, bench.flops(mode), failed, s)
            for row in group:
                row["case"] = case.kind
                if not row["flops"]:
                    row.update(flops=None, gflops=None)
                if row["impl"] in failures:
                    row["status"] += f" ({failures[row['impl']]})"
            bench.annotate(group, mode)
            rows += group
            advance(f"{case.label} {mode}")
        del bench  # free the problem before building the next
    return rows


def count(cases: Sequence[Case], modes: Sequence[str] = ModuleBench.modes) -> int:
    """Progress steps :func:`time_cases` makes (one per case and mode)."""
    return len(cases) * len(modes)
