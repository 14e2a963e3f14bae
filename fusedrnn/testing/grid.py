"""The grid of cases: cell variants, layout options, shapes; layer and whole-module cases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..cells import BUILT_IN_CELLS, CellSpec

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
        # the cells without kernels in every backend (IndRNN: the cpu backend's; the others: none yet)
        Variant("indrnn-relu", CellSpec("indrnn", "relu")),
        Variant("indrnn-tanh", CellSpec("indrnn", "tanh")),
        Variant("layer-norm-lstm", CellSpec("layer_norm_lstm", "layer_norm_lstm")),
        Variant("layer-norm-gru", CellSpec("layer_norm_gru", "layer_norm_gru")),
        Variant("slstm", CellSpec("slstm", "slstm")),
    )
}


def kernel_variants(backend: Optional[str] = None) -> Tuple[str, ...]:
    """The variants of :data:`VARIANTS` whose cell has kernels: in every fused backend (the built-in cells)
    without ``backend``, else in that backend (its ``cells``, whether or not it is available here, e.g.
    ``"cpu"`` adds IndRNN).  What the tests of a fused backend run."""
    if backend is None:
        cells = BUILT_IN_CELLS
    else:
        from .. import backends

        cells = backends.declared_cells(backend)
    return tuple(name for name, v in VARIANTS.items() if cells is None or (v.cell.family, v.cell.mode) in cells)


@dataclass(frozen=True)
class Option:
    """How the sequence is laid out and run."""

    name: str
    packed: bool = False
    reverse: bool = False
    bias: bool = True


def layout_name(packed: bool = False, reverse: bool = False, bias: bool = True) -> str:
    """``"packed-reverse-no-bias"``: the flags that differ from a padded forward layer with biases."""
    flags = [name for name, on in (("packed", packed), ("reverse", reverse), ("no-bias", not bias)) if on]
    return "-".join(flags) or "padded"


#: every layout: packed or padded, forward or reverse, with or without biases
LAYOUTS: Dict[str, Option] = {
    layout_name(p, r, b): Option(layout_name(p, r, b), p, r, b)
    for p, r, b in itertools.product((False, True), (False, True), (True, False))
}
#: the layouts of the default grid (``python -m fusedrnn.check``): each flag once, and packed reversed
OPTIONS: Dict[str, Option] = {
    name: LAYOUTS[name] for name in ("padded", "packed", "reverse", "packed-reverse", "no-bias")
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


#: tiny sizes for the op-level tests (gradcheck-sized problems, argument checks)
SMALL_SHAPE = Shape(4, 3, 5, 6)


def projection_size(hidden: int) -> int:
    """The proj_size used for ``*-proj`` variants by default: about a third of H, at least 1, below H."""
    return max(1, hidden // 3)


def variant_of(cell: CellSpec, peephole: bool = False, projection: bool = False) -> str:
    """The name in :data:`VARIANTS` of ``cell`` with those LSTM extras."""
    for name, v in VARIANTS.items():
        if (v.cell, v.peephole, v.projection) == (cell, peephole, projection):
            return name
    raise ValueError(f"no variant of {cell} with peephole={peephole}, projection={projection} in VARIANTS")


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
    """One layer-direction problem of the grid.

    ``option`` names a layout (:data:`LAYOUTS`; the default grid takes :data:`OPTIONS`).
    ``projection`` sets a ``*-proj`` variant's proj_size (default :func:`projection_size`);
    ``lengths`` fixes a packed case's sequence lengths (one per batch entry, the longest T;
    default: random, unsorted).  Either appears in :attr:`id` only when set.
    """

    option: str = "padded"
    projection: Optional[int] = None
    lengths: Optional[Tuple[int, ...]] = None
    _variants: ClassVar[Dict] = VARIANTS

    def __post_init__(self):
        super().__post_init__()
        if self.option not in LAYOUTS:
            raise ValueError(f"unknown option {self.option!r}; expected one of {list(LAYOUTS)}")
        if self.projection is not None and not (VARIANTS[self.variant].projection
                                                and 0 < self.projection < self.shape.H):
            raise ValueError(f"projection={self.projection} needs a '*-proj' variant and 0 < proj_size < H "
                             f"(got {self.variant!r}, H={self.shape.H})")
        if self.lengths is not None:
            object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
            if not (self.layout.packed and len(self.lengths) == self.shape.B and max(self.lengths) == self.shape.T
                    and min(self.lengths) >= 1):
                raise ValueError(f"lengths={self.lengths} need a packed option, one length in [1, T] per batch "
                                 f"entry and the longest T (got {self.option!r}, {self.shape.label})")

    @property
    def id(self) -> str:
        extras = ([f"P{self.projection}"] if self.projection is not None else []) + \
                 ([f"L{','.join(map(str, self.lengths))}"] if self.lengths is not None else [])
        return " ".join([super().id] + extras)

    @property
    def proj_size(self) -> int:
        if not VARIANTS[self.variant].projection:
            return 0
        return self.projection if self.projection is not None else projection_size(self.shape.H)

    @property
    def peephole(self) -> bool:
        return VARIANTS[self.variant].peephole

    @property
    def layout(self) -> Option:
        return LAYOUTS[self.option]


def cases(cells: Optional[Iterable[str]] = None, shapes: Optional[Iterable] = None,
          options: Optional[Iterable[str]] = None, projection: Optional[int] = None) -> List[Case]:
    """Every combination of the given variants, shapes and options (by default: all variants,
    :data:`DEFAULT_SHAPES`, :data:`OPTIONS`); ``projection``: the proj_size of the ``*-proj`` variants."""
    cells = list(cells) if cells is not None else list(VARIANTS)
    shapes = [Shape(*s) for s in shapes] if shapes is not None else list(DEFAULT_SHAPES)
    options = list(options) if options is not None else list(OPTIONS)
    return [Case(v, s, o, projection if VARIANTS[v].projection else None)
            for v, s, o in itertools.product(cells, shapes, options)]



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
