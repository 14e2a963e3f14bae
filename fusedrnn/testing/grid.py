"""The grid of cases: cell variants, layout options, shapes; layer and whole-module cases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..cells import CellSpec

# ----------------------------------------------------------------------------
# The grid: cell variants, layout options, shapes
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A cell and the LSTM extras (peepholes, projection) that change its weights."""

    name: str
    cell: CellSpec
    peephole: bool = False
    projection: bool = False


VARIANTS: Dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("lstm", CellSpec("lstm", "lstm")),
        Variant("lstm-peephole", CellSpec("lstm", "lstm"), peephole=True),
        Variant("lstm-proj", CellSpec("lstm", "lstm"), projection=True),
        Variant("lstm-peephole-proj", CellSpec("lstm", "lstm"), peephole=True, projection=True),
        Variant("gru", CellSpec("gru", "reset_after")),
        Variant("gru-reset-before", CellSpec("gru", "reset_before")),
        Variant("rnn-tanh", CellSpec("rnn", "tanh")),
        Variant("rnn-relu", CellSpec("rnn", "relu")),
    )
}


@dataclass(frozen=True)
class Option:
    """How the sequence is laid out and run."""

    name: str
    packed: bool = False
    reverse: bool = False
    bias: bool = True


OPTIONS: Dict[str, Option] = {
    o.name: o
    for o in (
        Option("padded"),
        Option("packed", packed=True),
        Option("reverse", reverse=True),
        Option("packed-reverse", packed=True, reverse=True),
        Option("no-bias", bias=False),
    )
}


class Shape(NamedTuple):
    """Sequence length, batch, input size, hidden size."""

    T: int
    B: int
    I: int
    H: int

    @property
    def label(self) -> str:
        return f"T{self.T} B{self.B} I{self.I} H{self.H}"


#: odd sizes that are multiples of no block size; a single step; and a batch and width large enough
#: for the blocked, multi-threaded kernel paths (seen: a CPU kernel right at B=5 and wrong at B=64 with 2 threads)
DEFAULT_SHAPES: Tuple[Shape, ...] = (Shape(7, 5, 3, 37), Shape(1, 5, 3, 37), Shape(3, 65, 5, 257))


def projection_size(hidden: int) -> int:
    """The proj_size used for ``*-proj`` variants: about a third of H, at least 1, below H."""
    return max(1, hidden // 3)


@dataclass(frozen=True)
class _GridCase:
    """What every case of the grids has: a cell variant, a shape and an option, named by ``id``."""

    variant: str
    shape: Shape
    option: str

    #: the variants this kind of case accepts
    _variants: ClassVar[Dict] = {}

    def __post_init__(self):
        if self.variant not in self._variants:
            raise ValueError(f"unknown variant {self.variant!r} for {type(self).__name__}; "
                             f"expected one of {list(self._variants)}")
        object.__setattr__(self, "shape", Shape(*self.shape))

    @property
    def id(self) -> str:
        return f"{self.variant}/{self.option}/{self.shape.label}"

    @property
    def cell(self) -> CellSpec:
        return VARIANTS[self.variant].cell

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Case(_GridCase):
    """One layer-direction problem of the grid."""

    option: str = "padded"
    _variants: ClassVar[Dict] = VARIANTS

    def __post_init__(self):
        super().__post_init__()
        if self.option not in OPTIONS:
            raise ValueError(f"unknown option {self.option!r}; expected one of {list(OPTIONS)}")

    @property
    def proj_size(self) -> int:
        return projection_size(self.shape.H) if VARIANTS[self.variant].projection else 0

    @property
    def peephole(self) -> bool:
        return VARIANTS[self.variant].peephole

    @property
    def layout(self) -> Option:
        return OPTIONS[self.option]


def cases(cells: Optional[Iterable[str]] = None, shapes: Optional[Iterable] = None,
          options: Optional[Iterable[str]] = None) -> List[Case]:
    """Every combination of the given variants, shapes and options (all of each by default)."""
    cells = list(cells) if cells is not None else list(VARIANTS)
    shapes = [Shape(*s) for s in shapes] if shapes is not None else list(DEFAULT_SHAPES)
    options = list(options) if options is not None else list(OPTIONS)
    return [Case(v, s, o) for v, s, o in itertools.product(cells, shapes, options)]



# ----------------------------------------------------------------------------
# Whole drop-in modules (fusedrnn.LSTM/GRU/RNN) against torch.nn
# ----------------------------------------------------------------------------

#: variants checked as whole modules: torch.nn class name, extra constructor arguments
MODULE_VARIANTS = {"lstm": ("LSTM", {}), "lstm-proj": ("LSTM", {"proj_size": True}), "gru": ("GRU", {}),
                   "rnn-tanh": ("RNN", {"nonlinearity": "tanh"}), "rnn-relu": ("RNN", {"nonlinearity": "relu"})}
MODULE_LAYERS = 2


@dataclass(frozen=True)
class ModuleCase(_GridCase):
    """A drop-in module with two layers, both directions and packed unsorted input, vs torch.nn on copied weights."""

    option: str = "module-2layer-bidir-packed"
    _variants: ClassVar[Dict] = MODULE_VARIANTS

    @property
    def layer_case(self) -> Case:
        return Case(self.variant, self.shape, "packed-reverse")

    def build(self, library, **extra) -> nn.Module:
        """The module from ``library`` (``torch.nn`` or ``fusedrnn``), float64 on CPU."""
        name, kwargs = MODULE_VARIANTS[self.variant]
        kwargs = {k: (projection_size(self.shape.H) if k == "proj_size" else v) for k, v in kwargs.items()}
        return getattr(library, name)(self.shape.I, self.shape.H, num_layers=MODULE_LAYERS, bidirectional=True,
                                      dtype=torch.float64, **kwargs, **extra)
