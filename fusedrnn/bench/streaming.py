"""The B=1 streaming group of ``python -m fusedrnn.bench`` (``--groups streaming``): speech and on-device latency.

One sequence at a time, T = 100 steps, I = H = 256 and 512, LSTM and GRU, float32, inference (a
no-grad call: what a streaming server runs), fusedrnn's modules (backend auto) against torch.nn's
with the same weights:

* ``sequence``: the one-layer module called once on the whole sequence ``[T, 1, I]``: per-sequence
  latency;
* ``step``: the cell module (``LSTMCell`` / ``GRUCell``) called once per step, the state made before
  the timed call and each step's input a view made once: T steps per timed call, so per-step latency
  is the median / T.

At B = 1 a step is a matrix-vector product bound by reading ``W_hh`` (and ``W_ih``) from cache, so the
table shows each call's GFLOP/s as a share of the float32 matmul ceiling measured in the run
(:mod:`fusedrnn.bench.peaks`), the time one step's arithmetic would take at that ceiling, the time one
read of the weights a step reads takes at the read bandwidth measured in the run for a buffer of their size
(:func:`fusedrnn.bench.peaks.read_bandwidth`: L2, the last-level cache or DRAM, whichever holds them), and
issue 17's per-step bound, twice the sum of those two.  A sequence's steps read ``W_hh`` (its input
projection is one product over all steps, counted in the arithmetic); a cell step reads ``W_ih`` and
``W_hh``.  ``--quick``: T = 5, I = H = 8 and 16.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch import nn

from .. import cell_modules, modules
from ..testing import Shape
from .console import print_table
from .module_bench import FUSEDRNN, TORCH, Case, ModuleBench, Subject, final_hidden, time_cases
from .module_bench import count as count_steps
from .peaks import peak, read_bandwidth, share
from .report import gflops_text, percent_text, ratio_style, ratio_text, section, spread_text, us_text
from .shapes import BENCH_CELLS, forward_flops

NAME = "streaming"
FAMILIES = ("lstm", "gru")
KINDS = ("sequence", "step")
STEPS, HIDDEN_SIZES = 100, (256, 512)
QUICK_STEPS, QUICK_HIDDEN_SIZES = 5, (8, 16)
_LAYERS = {"lstm": (nn.LSTM, modules.LSTM), "gru": (nn.GRU, modules.GRU)}
_CELLS = {"lstm": (nn.LSTMCell, cell_modules.LSTMCell), "gru": (nn.GRUCell, cell_modules.GRUCell)}


def cases(families: Sequence[str], quick: bool) -> List[Case]:
    steps, sizes = (QUICK_STEPS, QUICK_HIDDEN_SIZES) if quick else (STEPS, HIDDEN_SIZES)
    return [Case(kind, f, Shape(steps, 1, h, h)) for f in families if f in FAMILIES for h in sizes for kind in KINDS]


def cell_steps(cell: nn.Module, steps, state) -> torch.Tensor:
    """A cell called once per step, its state fed back: the last hidden state."""
    for x_t in steps:
        state = cell(x_t, state)
    return final_hidden(state)


class StreamingBench(ModuleBench):
    modes = ("inference",)

    def __init__(self, case: Case, s, peaks: dict, seed: int = 0):
        T, B, I, H = case.shape
        torch.manual_seed(seed)
        kw = dict(device=s.device, dtype=torch.float32)
        x = torch.randn(T, B, I, **kw)
        h0 = torch.randn(B, H, **kw)
        state = (h0, torch.randn(B, H, **kw)) if case.family == "lstm" else h0
        if case.kind == "sequence":
            pair = [c(I, H, **kw) for c in _LAYERS[case.family]]
            inputs = dict(x=x, state=tuple(t.unsqueeze(0) for t in state) if case.family == "lstm" else h0[None])
        else:
            pair = [c(I, H, **kw) for c in _CELLS[case.family]]
            inputs = dict(x=x.unbind(0), state=state, run=cell_steps)
        pair[1].load_state_dict(pair[0].state_dict())
        super().__init__(case, torch.float32, {impl: Subject(m, **inputs) for impl, m in zip((TORCH, FUSEDRNN), pair)})
        self.threads, self.peaks, self.device = s.threads, peaks, s.device

    def flops(self, mode: str) -> float:
        return forward_flops(BENCH_CELLS[self.family], self.shape)

    def weight_bytes(self) -> int:
        """Bytes of the weights one step reads: ``W_hh`` and ``b_hh`` in a sequence, every parameter in a cell step."""
        m = self.subjects[FUSEDRNN].module
        names = [n for n, _ in m.named_parameters() if self.case.kind == "step" or "_hh" in n]
        return sum(dict(m.named_parameters())[n].numel() * 4 for n in names)

    def annotate(self, group: List[dict], mode: str) -> None:
        ceiling = peak(self.peaks, "float32", self.threads)
        at_peak = None if not ceiling else self.flops(mode) / self.shape.T / (ceiling * 1e9) * 1e3
        bandwidth = read_bandwidth(self.weight_bytes(), self.device, self.threads)
        read = None if not bandwidth else self.weight_bytes() / (bandwidth * 1e9) * 1e3
        bound = None if at_peak is None or read is None else 2 * (at_peak + read)
        for row in group:
            row["step_ms"] = None if row["median_ms"] is None else row["median_ms"] / self.shape.T
            row["peak_fraction_float32"] = share(row["gflops"], self.peaks, "float32", self.threads)
            row["step_at_peak_ms"] = at_peak
            row["weights_read_ms"] = read
            row["step_bound_ms"] = bound


def run(families: Sequence[str], s, peaks: dict, quick: bool,
        advance: Callable[[str], None] = lambda label: None) -> List[dict]:
    return time_cases(cases(families, quick), lambda case: StreamingBench(case, s, peaks), s, advance)


def count(families: Sequence[str], quick: bool) -> int:
    return count_steps(cases(families, quick), StreamingBench.modes)


COLUMNS = ["case", "cell", "T,B,I,H", "impl", "median us", "q20-q80 us", "us per step", "vs torch.nn", "GFLOP/s",
           "% f32 peak", "step at peak us", "weights read us", "step bound us", "note"]
CAPTION = ("B=1 streaming, float32 inference: one timed call = the layer on the whole sequence (sequence) or the "
           "cell called once per step (step); us per step = median / T; vs torch.nn = torch.nn time / fusedrnn "
           "time, the median of its value in each round; % f32 peak = GFLOP/s as a share of the run's float32 "
           "matmul ceiling at its thread count; step at peak = one step's FLOPs at that ceiling; weights read = one read "
           "of the weights a step reads (sequence: W_hh; step: W_ih and W_hh) at the read bandwidth measured for "
           "their size; step bound = 2 x (step at peak + weights read), issue 17's per-step target")


def _cells(r: dict) -> List[str]:
    return [r["case"], r["cell"], f"{r['T']},{r['B']},{r['I']},{r['H']}", r["impl"], us_text(r["median_ms"]),
            spread_text(r, us_text),
            us_text(r.get("step_ms")), ratio_text(r.get("ratio_vs_torch")),
            gflops_text(r), percent_text(r.get("peak_fraction_float32")),
            *("-" if r.get(k) is None else f"{r[k] * 1e3:.2g}"
              for k in ("step_at_peak_ms", "weights_read_ms", "step_bound_ms")),
            "" if r["status"] == "ok" else r["status"]]


def print_rows(rows: Sequence[dict], title: str) -> None:
    print_table(title, COLUMNS, [_cells(r) for r in rows], [ratio_style(r) for r in rows], caption=CAPTION)


def markdown(rows: Sequence[dict]) -> str:
    return section("B=1 streaming", COLUMNS, [_cells(r) for r in rows], CAPTION) if rows else ""
