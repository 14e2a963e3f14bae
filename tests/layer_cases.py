"""Random single layer-direction problems shared by the core tests.

A :class:`LayerCase` holds fresh random inputs (never zeros) for one cell and
one set of options, in the shapes of :mod:`fusedrnn.backends.base`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch.nn.utils.rnn import pack_sequence

from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellSpec, all_specs


@dataclass
class LayerCase:
    cell: CellSpec
    x: torch.Tensor
    h0: torch.Tensor
    c0: Optional[torch.Tensor]
    weights: LayerWeights
    batch_sizes: Optional[torch.Tensor]
    reverse: bool

    def inputs(self) -> List[Optional[torch.Tensor]]:
        """x, h0, c0 and the weights, in the ops' argument order."""
        return [self.x, self.h0, self.c0, *self.weights]

    def differentiable(self) -> List[torch.Tensor]:
        return [t for t in self.inputs() if t is not None]


def make_case(cell: CellSpec, *, T=4, B=3, I=5, H=6, proj=0, peephole=False, bias=True, packed=False,
              reverse=False, dtype=torch.float64, lengths=None, scale=1.0, generator=None) -> LayerCase:
    """A random problem; ``packed`` uses unsorted random lengths (max length T)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).mul(scale).to(dtype)

    G, hout = cell.gates, (proj or H)
    weights = LayerWeights(
        rand(G * H, I) / I ** 0.5,
        rand(G * H, hout) / hout ** 0.5,
        rand(G * H) if bias else None,
        rand(G * H) if bias else None,
        rand(3 * H) if peephole else None,
        rand(proj, H) / H ** 0.5 if proj else None,
    )
    if packed:
        if lengths is None:
            lengths = [T] + torch.randint(1, T + 1, (B - 1,), generator=g).tolist()
            lengths = [lengths[i] for i in torch.randperm(B, generator=g).tolist()]
        seqs = [rand(n, I) for n in lengths]
        pk = pack_sequence(seqs, enforce_sorted=False)
        x, batch_sizes = pk.data, pk.batch_sizes
    else:
        x, batch_sizes = rand(T, B, I), None
    h0 = rand(B, hout)
    c0 = rand(B, H) if cell.has_cell_state else None
    return LayerCase(cell, x, h0, c0, weights, batch_sizes, reverse)


def option_grid():
    """(cell, options) pairs covering every cell, variant and layout option."""
    cases = []
    for cell in all_specs():
        extras = [dict()]
        if cell.family == "lstm":
            extras = [dict(), dict(peephole=True), dict(proj=4), dict(peephole=True, proj=4)]
        for extra, packed, reverse, bias in itertools.product(extras, (False, True), (False, True), (True, False)):
            cases.append((cell, dict(extra, packed=packed, reverse=reverse, bias=bias)))
    return cases


def case_id(cell, options) -> str:
    flags = [k if v is True else f"{k}{v}" for k, v in options.items() if v]
    return "-".join([str(cell)] + flags)
