"""Benchmark shapes (named presets or explicit ``T,B,I,H``) and the FLOP count of a layer.

All benchmark shapes are one layer, one direction, no projection: they measure
the kernels, not the module plumbing.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

from ..cells import FAMILIES, CellSpec, default_mode
from ..testing import Shape

#: cell family -> the CellSpec benchmarked for it (torch.nn's default variant)
BENCH_CELLS: Dict[str, CellSpec] = {family: CellSpec(family, default_mode(family)) for family in FAMILIES}
#: cell family -> the fusedrnn.testing variant with the same cell
CHECK_VARIANTS = {"lstm": "lstm", "gru": "gru", "rnn": "rnn-tanh"}

#: the shape everyone quotes (FlashRNN): LSTM, B=16, T=1024, H=768
QUOTED = Shape(1024, 16, 768, 768)

PRESETS: Dict[str, List[Shape]] = {
    # the CPU shapes (docs/design.md section 10)
    "cpu": [Shape(100, 32, 256, 256), Shape(200, 8, 128, 512), Shape(50, 64, 1024, 1024)],
    # tiny shapes for smoke runs and tests (the reference backend is fast enough here)
    "quick": [Shape(5, 3, 4, 8), Shape(9, 2, 3, 5)],
    "flashrnn": [QUOTED],
    "batch-sweep": [Shape(1024, b, 768, 768) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)],
    "seq-sweep": [Shape(t, 16, 768, 768) for t in (64, 128, 256, 512, 1024, 2048)],
    "hidden-sweep": [Shape(1024, 16, h, h) for h in (128, 256, 512, 768, 1024, 2048)],
}
PRESETS["gpu"] = PRESETS["batch-sweep"] + PRESETS["seq-sweep"] + PRESETS["hidden-sweep"]

#: what a run measures when --shapes is not given
DEFAULT_PRESET = {"cpu": "cpu", "cuda": "gpu"}


def parse_shapes(specs: Iterable[str]) -> List[Shape]:
    """Preset names and explicit ``T,B,I,H`` shapes, in order, without repeats; ``none`` adds none (a run
    of the per-call overhead group alone)."""
    shapes: List[Shape] = []
    for spec in specs:
        if spec == "none":
            continue
        if spec in PRESETS:
            new = PRESETS[spec]
        else:
            try:
                values = [int(v) for v in spec.split(",")]
            except ValueError:
                values = []
            if len(values) != 4 or min(values) < 1:
                raise ValueError(f"--shapes takes preset names ({', '.join(PRESETS)}) or T,B,I,H; got {spec!r}")
            new = [Shape(*values)]
        shapes += [s for s in new if s not in shapes]
    return shapes


def forward_flops(cell: CellSpec, shape: Shape, proj_size: int = 0) -> float:
    """Multiply-adds x 2 of one layer-direction's forward: ``2*T*B*G*H*(I+Hout)`` (+ projection).

    The pointwise gate math is not counted (it is O(T*B*H), negligible beside the products).
    """
    T, B, I, H = shape
    hout = proj_size or H
    flops = 2.0 * T * B * cell.gates * H * (I + hout)
    if proj_size:
        flops += 2.0 * T * B * proj_size * H
    return flops


def training_flops(cell: CellSpec, shape: Shape, proj_size: int = 0) -> float:
    """Forward + backward: about 3x the forward (the backward computes two products per forward product)."""
    return 3.0 * forward_flops(cell, shape, proj_size)
