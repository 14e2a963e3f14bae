"""The stack group of ``python -m fusedrnn.bench`` (``--groups bidir``): a 2-layer bidirectional LSTM.

Issue 17 asks for whole stacks in one call (both directions concurrently, the layers as a wavefront) at
>= 1.3x fusedrnn's own layer-by-layer path.  The case: ``LSTM(256, 256, num_layers=2,
bidirectional=True)`` on T = 100, B = 8 (``--quick``: T = 5, B = 2, I = H = 8), float32, inference and
training (gradients of the input and every parameter), fusedrnn's module (backend auto) against
torch.nn's with the same weights, and against fusedrnn's layer-by-layer path.

The layer-by-layer path.  Today :class:`fusedrnn.rnn_base.FusedRNNBase` *is* layer by layer
(``_run_layers``: one op call per layer-direction), so "vs layer-by-layer" is 1.00x by definition and
not timed twice.  A whole-stack path is to expose the switch named :data:`LAYER_BY_LAYER_SWITCH`: a
module attribute that, set to False on an instance, makes it run ``_run_layers``'s one op per
layer-direction.  When the module has it, this group times a copy with the switch off as
``fusedrnn layer-by-layer`` and the column becomes that copy's time / fusedrnn's.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .. import modules
from ..testing import Shape
from .console import print_table
from .module_bench import FUSEDRNN, TORCH, Case, ModuleBench, Subject, time_cases
from .module_bench import count as count_steps
from .report import gflops_text, ms_text, ratio_style, ratio_text, section, spread_text
from .rounds import round_ratio
from .shapes import BENCH_CELLS, forward_flops

NAME = "bidir"
FAMILIES = ("lstm",)
LAYERS = 2
SHAPE, QUICK_SHAPE = Shape(100, 8, 256, 256), Shape(5, 2, 8, 8)
LAYER_BY_LAYER = "fusedrnn layer-by-layer"
#: the hook for a whole-stack path: ``module.whole_stack = False`` must force one op per layer-direction
LAYER_BY_LAYER_SWITCH = "whole_stack"


def cases(families: Sequence[str], quick: bool) -> List[Case]:
    return [Case(NAME, f, QUICK_SHAPE if quick else SHAPE) for f in families if f in FAMILIES]


def layer_by_layer(module: nn.Module) -> Optional[nn.Module]:
    """A copy of ``module`` forced onto the layer-by-layer path, or None when the module has no other path."""
    if not hasattr(module, LAYER_BY_LAYER_SWITCH):
        return None
    forced = copy.deepcopy(module)
    setattr(forced, LAYER_BY_LAYER_SWITCH, False)
    return forced


def stack_flops(shape: Shape, layers: int = LAYERS) -> float:
    """Forward FLOPs of a bidirectional stack: layer 0 reads I, the others both directions' H."""
    T, B, I, H = shape
    cell = BENCH_CELLS["lstm"]
    return 2 * sum(forward_flops(cell, Shape(T, B, I if layer == 0 else 2 * H, H)) for layer in range(layers))


class StackBench(ModuleBench):
    def __init__(self, case: Case, s, seed: int = 0):
        T, B, I, H = case.shape
        torch.manual_seed(seed)
        kw = dict(device=s.device, dtype=torch.float32)
        pair = [c(I, H, LAYERS, bidirectional=True, **kw) for c in (nn.LSTM, modules.LSTM)]
        pair[1].load_state_dict(pair[0].state_dict())
        inputs = dict(x=torch.randn(T, B, I, **kw), grad_out=torch.randn(T, B, 2 * H, **kw))
        subjects = {TORCH: Subject(pair[0], **inputs), FUSEDRNN: Subject(pair[1], **inputs)}
        forced = layer_by_layer(pair[1])
        if forced is not None:
            subjects[LAYER_BY_LAYER] = Subject(forced, **inputs)
        super().__init__(case, torch.float32, subjects)

    def flops(self, mode: str) -> float:
        return stack_flops(self.shape) * (3 if mode == "training" else 1)

    def annotate(self, group: List[dict], mode: str) -> None:
        rows = {r["impl"]: r for r in group}
        base = rows.get(LAYER_BY_LAYER)
        for impl, row in rows.items():
            if impl == TORCH:
                row["ratio_vs_layer_by_layer"] = None
            elif base is not None:
                row["ratio_vs_layer_by_layer"] = round_ratio(base, row)
            else:  # the module is the layer-by-layer path (module docstring)
                row["ratio_vs_layer_by_layer"] = 1.0 if row["median_ms"] is not None else None


def run(families: Sequence[str], s, peaks: dict, quick: bool,
        advance: Callable[[str], None] = lambda label: None) -> List[dict]:
    return time_cases(cases(families, quick), lambda case: StackBench(case, s), s, advance)


def count(families: Sequence[str], quick: bool) -> int:
    return count_steps(cases(families, quick))


COLUMNS = ["cell", "T,B,I,H", "mode", "impl", "median ms", "q20-q80 ms", "vs torch.nn", "vs layer-by-layer",
           "GFLOP/s", "note"]
CAPTION = (f"{LAYERS}-layer bidirectional LSTM module, float32; vs torch.nn = torch.nn time / this time, "
           "vs layer-by-layer = fusedrnn's layer-by-layer time / this time (each the median of its value in each "
           f"round; 1.00x while the module has no whole-stack path, i.e. no `{LAYER_BY_LAYER_SWITCH}` switch); "
           "GFLOP/s counts the products of all layer-directions")


def _cells(r: dict) -> List[str]:
    return [r["cell"], f"{r['T']},{r['B']},{r['I']},{r['H']}", r["mode"], r["impl"],
            ms_text(r["median_ms"]),
            spread_text(r),
            ratio_text(r.get("ratio_vs_torch")), ratio_text(r.get("ratio_vs_layer_by_layer")),
            gflops_text(r), "" if r["status"] == "ok" else r["status"]]


def print_rows(rows: Sequence[dict], title: str) -> None:
    print_table(title, COLUMNS, [_cells(r) for r in rows], [ratio_style(r) for r in rows], caption=CAPTION)


def markdown(rows: Sequence[dict]) -> str:
    return section(f"{LAYERS}-layer bidirectional LSTM", COLUMNS, [_cells(r) for r in rows], CAPTION) if rows else ""
