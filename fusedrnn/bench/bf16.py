"""The bfloat16 group of ``python -m fusedrnn.bench`` (``--groups bf16``): a CPU inference server switched to bf16.

Issue 17 asks fusedrnn's bf16 layers to beat torch.nn's bf16 (oneDNN's bf16 kernels where the CPU has
``avx512_bf16``) and its own float32.  For LSTM and GRU at the three CPU shapes (shapes.py's ``cpu``
preset; ``quick`` with ``--quick``) three implementations run the same one-layer module, weights and
inputs, all rounded to bf16 once:

* ``torch.nn``: ``nn.LSTM`` / ``nn.GRU`` ``.to(torch.bfloat16)``, the ratios' base;
* ``fusedrnn``: fusedrnn's module ``.to(torch.bfloat16)`` (backend auto);
* ``fusedrnn float32``: fusedrnn's module in float32 on the same (bf16-representable) values, for
  "vs own float32" = its time / fusedrnn bf16's.

Inference is a no-grad forward; training the gradients of the input and every parameter for a fixed
random upstream gradient.  Each implementation's error is measured against torch.nn in float64 on the
same values (the output in inference, the worst of the output and every gradient in training; relative,
max-abs over max-magnitude as :func:`fusedrnn.testing.error`), so fusedrnn bf16's error sits beside
torch.nn bf16's; fusedrnn bf16 beyond the project's bf16 rule (2x torch.nn bf16's error plus one unit
roundoff, :func:`fusedrnn.testing.tolerance`) fails and is not timed.  GFLOP/s are shown as a share of
the float32 and of the bf16 matmul ceilings measured in the run (:mod:`fusedrnn.bench.peaks`).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

from .. import modules, testing
from .console import print_table
from .module_bench import FUSEDRNN, TORCH, Case, ModuleBench, Subject, forward_backward, time_cases
from .module_bench import count as count_steps
from .peaks import share
from .report import gflops_text, ms_text, percent_text, ratio_style, ratio_text, section, spread_text
from .rounds import round_ratio
from .shapes import BENCH_CELLS, PRESETS, forward_flops

NAME = "bf16"
FAMILIES = ("lstm", "gru")
FLOAT32 = "fusedrnn float32"
_MODULES = {"lstm": (nn.LSTM, modules.LSTM), "gru": (nn.GRU, modules.GRU)}


def cases(families: Sequence[str], quick: bool) -> List[Case]:
    shapes = PRESETS["quick" if quick else "cpu"]
    return [Case(NAME, f, shape) for f in families if f in FAMILIES for shape in shapes]


class Bf16Bench(ModuleBench):
    """One cell and shape: torch.nn and fusedrnn in bf16, fusedrnn in float32, and their errors vs float64."""

    def __init__(self, case: Case, s, peaks: dict, seed: int = 0):
        T, B, I, H = case.shape
        torch.manual_seed(seed)
        torch_class, ours_class = _MODULES[case.family]
        reference = torch_class(I, H, device=s.device).to(torch.bfloat16).double()  # bf16 values, float64
        ours = ours_class(I, H, device=s.device)
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(T, B, I, device=s.device, dtype=torch.bfloat16)
        grad_out = torch.randn(T, B, H, device=s.device, dtype=torch.bfloat16)
        bf16 = dict(x=x, grad_out=grad_out)
        f32 = dict(x=x.float(), grad_out=grad_out.float())
        super().__init__(case, torch.bfloat16, {
            TORCH: Subject(copy.deepcopy(reference).to(torch.bfloat16), **bf16),
            FUSEDRNN: Subject(copy.deepcopy(ours).to(torch.bfloat16), **bf16),
            FLOAT32: Subject(ours.float(), **f32),
        })
        self.reference = Subject(reference, x.double(), grad_out=grad_out.double())
        self.threads, self.peaks = s.threads, peaks
        self.errors: Dict[str, Dict[str, float]] = {}

    def flops(self, mode: str) -> float:
        return forward_flops(BENCH_CELLS[self.family], self.shape) * (3 if mode == "training" else 1)

    def measure_errors(self) -> Dict[str, str]:
        """Each implementation's relative error vs float64, per mode, into ``self.errors[impl][mode]``;
        returns impl -> why for those that failed to run."""
        leaf = lambda s: s.x.detach().clone().requires_grad_()  # noqa: E731
        expected = forward_backward(self.reference, leaf(self.reference))
        crashed = {}
        for impl, subject in self.subjects.items():
            try:
                got = forward_backward(subject, leaf(subject))
            except Exception as exc:  # reported on its row; the other implementations are still timed
                crashed[impl] = f"error: {type(exc).__name__}: {exc}"
                continue
            rel = [testing.error(a, e)[1] for a, e in zip(got, expected)]
            self.errors[impl] = {"inference": rel[0], "training": max(rel)}
        return crashed

    def failures(self) -> Dict[str, str]:
        """fusedrnn bf16 outside the bf16 rule against torch.nn bf16's own error (in either mode)."""
        crashed = self.measure_errors()
        if crashed or TORCH not in self.errors:
            return crashed
        for mode, mine in self.errors[FUSEDRNN].items():
            bound = testing.tolerance(torch.bfloat16, baseline=self.errors[TORCH][mode])
            if not mine <= bound:
                return {FUSEDRNN: f"{mode} error {mine:.2e} vs float64 > {bound:.2e}, "
                                  f"2x torch.nn bf16's {self.errors[TORCH][mode]:.2e} + roundoff"}
        return {}

    def annotate(self, group: List[dict], mode: str) -> None:
        rows = {r["impl"]: r for r in group}
        rows[FLOAT32]["dtype"] = "float32"
        for impl, row in rows.items():
            row["error_vs_float64"] = self.errors.get(impl, {}).get(mode)
            row["ratio_vs_own_float32"] = round_ratio(rows[FLOAT32], row) if impl == FUSEDRNN else None
            row["peak_fraction_float32"] = share(row["gflops"], self.peaks, "float32", self.threads)
            row["peak_fraction_bfloat16"] = share(row["gflops"], self.peaks, "bfloat16", self.threads)


def run(families: Sequence[str], s, peaks: dict, quick: bool,
        advance: Callable[[str], None] = lambda label: None) -> List[dict]:
    return time_cases(cases(families, quick), lambda case: Bf16Bench(case, s, peaks), s, advance)


def count(families: Sequence[str], quick: bool) -> int:
    return count_steps(cases(families, quick))


COLUMNS = ["cell", "T,B,I,H", "mode", "impl", "dtype", "median ms", "q20-q80 ms", "vs torch.nn bf16",
           "vs own float32", "GFLOP/s", "% f32 peak", "% bf16 peak", "error vs float64", "note"]
CAPTION = ("bfloat16: one layer module .to(torch.bfloat16), the same bf16 values for every implementation; "
           "vs torch.nn bf16 = torch.nn bf16 time / this time, vs own float32 = fusedrnn float32 time / fusedrnn "
           "bf16 time (each the median of its value in each round); % peak = GFLOP/s as a share of the run's "
           "float32 and bf16 matmul ceilings at its thread count; error = relative error vs torch.nn in float64 "
           "on the same values (inference: the output; training: the worst of the output and every gradient)")


def _cells(r: dict) -> List[str]:
    error = r.get("error_vs_float64")
    return [r["cell"], f"{r['T']},{r['B']},{r['I']},{r['H']}", r["mode"], r["impl"], r["dtype"],
            ms_text(r["median_ms"]),
            spread_text(r),
            ratio_text(r.get("ratio_vs_torch")), ratio_text(r.get("ratio_vs_own_float32")),
            gflops_text(r), percent_text(r.get("peak_fraction_float32")),
            percent_text(r.get("peak_fraction_bfloat16")), "-" if error is None else f"{error:.2e}",
            "" if r["status"] == "ok" else r["status"]]


def print_rows(rows: Sequence[dict], title: str) -> None:
    print_table(title, COLUMNS, [_cells(r) for r in rows], [ratio_style(r) for r in rows], caption=CAPTION)


def markdown(rows: Sequence[dict]) -> str:
    return section("bfloat16", COLUMNS, [_cells(r) for r in rows], CAPTION) if rows else ""
