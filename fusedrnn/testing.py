"""Correctness comparison of fusedrnn backends: the float64 reference and torch.nn as oracles.

For people writing a backend (or changing one)::

    import fusedrnn.testing as ft
    report = ft.compare_backend("mybackend", cells=["lstm", "gru"], shapes=[(7, 5, 3, 37)])
    print(report)                               # worst error per output / gradient, pass or fail
    ft.assert_close_to_reference("mybackend")   # the same, raising AssertionError on any failure

``python -m fusedrnn.check`` runs the same comparison over the whole grid and
prints it as a table.

What is compared.  A :class:`Case` is one layer-direction problem: a cell
variant (:data:`VARIANTS`), a layout option (:data:`OPTIONS`: padded or packed
with unsorted lengths, forward or reverse, with or without bias) and a
:class:`Shape`.  Its inputs are fresh random numbers (never zeros), drawn in
float64 from a seed derived from the case's id, then rounded to the dtype
under test, so every computation starts from the same values.  Each run
returns the outputs ``out``, ``h_n``, ``c_n`` and, for a fixed random upstream
gradient of all three, the gradient of every input (``grad_x``, ``grad_h0``,
``grad_c0``, ``grad_w_ih`` ... ``grad_w_proj``), so every gradient the
backend's backward writes is checked.

The oracles, both in float64 on the same rounded inputs:

* ``reference``: autograd through :func:`fusedrnn.reference.sequence_forward`
  (independent of every hand-written backward, the reference backend's included);
* ``torch.nn``: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with the weights copied in,
  for the variants torch has (not peepholes, not GRU ``reset_before``); the
  reverse direction is the reverse half of a bidirectional module.

Error measure: ``max_abs = max |actual - expected|`` and
``rel = max_abs / max |expected|`` (max-abs over max-magnitude, i.e. the
infinity-norm relative error of the whole tensor; a NaN or inf anywhere makes
it inf).  Tolerances on ``rel`` (:func:`tolerance`):

* float64: 1e-10; float32: 1e-5;
* float16 / bfloat16: the FlashAttention rule, at most twice the error of a
  baseline computation in the same dtype (the reference backend, by default)
  against the same oracle, plus one unit roundoff of the dtype;
* a float32 baseline loosens the bound to twice the baseline's error where that
  is larger (the benchmark's check at long sequences uses torch.nn in float32).
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, functional, reference
from .backends.base import LayerWeights
from .cells import CellSpec, torch_twin

__all__ = [
    "OPTIONS",
    "ORACLES",
    "VARIANTS",
    "Case",
    "CaseOutcome",
    "ModuleCase",
    "Checker",
    "ErrorRow",
    "Report",
    "Shape",
    "assert_close_to_reference",
    "cases",
    "compare_backend",
    "compare_backends",
    "default_device",
    "default_dtypes",
    "dtype_name",
    "error",
    "grid",
    "module_cases",
    "tolerance",
]

Results = Dict[str, torch.Tensor]

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
# A problem's data, and the runs that produce comparable results
# ----------------------------------------------------------------------------

#: differentiable inputs, in the ops' argument order
INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peep", "w_proj")
OUTPUTS = ("out", "h_n", "c_n")
#: every quantity compared, in report order
QUANTITIES = OUTPUTS + tuple(f"grad_{n}" for n in INPUTS)


@dataclass
class Problem:
    """Random float64 data for a case: inputs (padded ``x``), lengths, upstream gradients."""

    case: "Case | ModuleCase"
    inputs: Dict[str, torch.Tensor]
    upstream: Dict[str, torch.Tensor]
    lengths: Optional[List[int]]


def make_problem(case: Case, dtype: torch.dtype = torch.float64) -> Problem:
    """The case's data, rounded to ``dtype`` (and held in float64).

    Weights are uniform in +-1/sqrt(fan-in) like torch.nn's initialisation,
    so the gates neither saturate nor stay linear; inputs and states are
    uniform in +-1.
    """
    T, B, I, H = case.shape
    G, P = case.cell.gates, case.proj_size
    hout = P or H
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))

    def rand(*shape, fan=1):
        t = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) / fan ** 0.5
        return t.to(dtype).to(torch.float64)

    bias = case.layout.bias
    inputs = {
        "x": rand(T, B, I),
        "h0": rand(B, hout),
        "c0": rand(B, H) if case.cell.has_cell_state else None,
        "w_ih": rand(G * H, I, fan=I),
        "w_hh": rand(G * H, hout, fan=hout),
        "b_ih": rand(G * H, fan=H) if bias else None,
        "b_hh": rand(G * H, fan=H) if bias else None,
        "w_peep": rand(3 * H, fan=H) if case.peephole else None,
        "w_proj": rand(P, H, fan=H) if P else None,
    }
    upstream = {
        "out": rand(T, B, hout),
        "h_n": rand(B, hout),
        "c_n": rand(B, H) if case.cell.has_cell_state else None,
    }
    lengths = None
    if case.layout.packed:
        # unsorted random lengths in [1, T], one of them T so that every step exists
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T
        lengths = lengths.tolist()
    return Problem(case, {k: v for k, v in inputs.items() if v is not None},
                   {k: v for k, v in upstream.items() if v is not None}, lengths)


#: f(cell, x_rows, h0, c0, weights, batch_sizes, reverse) -> (out, h_n, c_n)
LayerFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]


def _leaves(problem: Problem, dtype: torch.dtype, device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in problem.inputs.items()}


def _gradients(problem: Problem, leaves: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor]) -> Results:
    """Outputs and the gradients of every input for the problem's upstream gradients (float64)."""
    device = next(iter(leaves.values())).device
    loss = sum((outputs[k].to(torch.float64) * problem.upstream[k].to(device)).sum() for k in problem.upstream)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results = {k: outputs[k].detach().to(torch.float64) for k in problem.upstream}
    for name, leaf, grad in zip(leaves, leaves.values(), grads):
        results[f"grad_{name}"] = (torch.zeros_like(leaf) if grad is None else grad).detach().to(torch.float64)
    return results


def run_layer(problem: Problem, layer_fn: LayerFn, dtype: torch.dtype, device) -> Results:
    """Run one layer-direction function on the problem in ``dtype``; padded results in batch order.

    Packed cases go in as packed rows (sorted by length, as PackedSequence
    keeps them) with ``batch_sizes``, and come back padded and unsorted, so
    results of every run line up element for element.
    """
    case = problem.case
    leaves = _leaves(problem, dtype, device)
    x, h0, c0 = leaves["x"], leaves["h0"], leaves.get("c0")
    weights = LayerWeights(*(leaves.get(n) for n in INPUTS[3:]))
    packed = None
    rows, batch_sizes = x, None
    if problem.lengths is not None:
        packed = pack_padded_sequence(x, torch.tensor(problem.lengths), enforce_sorted=False)
        rows, batch_sizes = packed.data, packed.batch_sizes
        h0 = h0[packed.sorted_indices]
        c0 = None if c0 is None else c0[packed.sorted_indices]
    out, h_n, c_n = layer_fn(case.cell, rows, h0, c0, weights, batch_sizes, case.layout.reverse)
    if packed is not None:
        out = pad_packed_sequence(
            PackedSequence(out, batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            total_length=case.shape.T,
        )[0]
        h_n = h_n[packed.unsorted_indices]
        c_n = None if c_n is None else c_n[packed.unsorted_indices]
    return _gradients(problem, leaves, {"out": out, "h_n": h_n, "c_n": c_n})


def backend_layer(name: str) -> LayerFn:
    """The layer function of fusedrnn backend ``name`` (through the ops and autograd)."""

    def run(cell, x, h0, c0, weights, batch_sizes, reverse):
        return tuple(functional.layer(cell, x, h0, c0, weights, batch_sizes, reverse, backend=name))

    return run


def reference_layer(cell, x, h0, c0, weights, batch_sizes, reverse):
    """The differentiable reference forward (autograd gives its gradients)."""
    res = reference.sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse)
    return res.out, res.h_n, res.c_n


def torch_module(case: Case, dtype: torch.dtype = torch.float64, device="cpu") -> Optional[nn.RNNBase]:
    """The torch.nn module computing the case's cell (bidirectional for reverse), or None if torch has none."""
    twin = torch_twin(case.cell)
    if twin is None or case.peephole:  # torch.nn has no peepholes
        return None
    name, kwargs = twin
    kwargs.update(bias=case.layout.bias, bidirectional=case.layout.reverse, device=device, dtype=dtype)
    if case.proj_size:
        kwargs["proj_size"] = case.proj_size
    return getattr(nn, name)(case.shape.I, case.shape.H, **kwargs)


#: fusedrnn weight name -> torch.nn parameter name (layer 0; "_reverse" appended for reverse)
TORCH_NAMES = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0",
               "w_proj": "weight_hr_l0"}


def run_torch(problem: Problem, dtype: torch.dtype, device) -> Optional[Results]:
    """The case computed by torch.nn on the problem's weights, or None where torch lacks the cell."""
    case = problem.case
    module = torch_module(case, dtype, device)
    if module is None:
        return None
    reverse = case.layout.reverse
    suffix = "_reverse" if reverse else ""
    params = {k: getattr(module, TORCH_NAMES[k] + suffix) for k in TORCH_NAMES if k in problem.inputs}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(problem.inputs[k])
    leaves = {k: v.to(device=device, dtype=dtype).requires_grad_()
              for k, v in problem.inputs.items() if k not in params}
    x, h0, c0 = leaves["x"], leaves["h0"], leaves.get("c0")

    def directions(state):  # [B, D] -> [1 or 2, B, D]; the unused forward direction starts at zero
        return torch.stack([torch.zeros_like(state), state]) if reverse else state[None]

    hx = (directions(h0), directions(c0)) if c0 is not None else directions(h0)
    seq = x if problem.lengths is None else pack_padded_sequence(x, torch.tensor(problem.lengths),
                                                                 enforce_sorted=False)
    out, state = module(seq, hx)
    if problem.lengths is not None:
        out = pad_packed_sequence(out, total_length=case.shape.T)[0]
    h_n, c_n = state if c0 is not None else (state, None)
    hout = h0.shape[-1]
    outputs = {"out": out[..., hout:] if reverse else out, "h_n": h_n[-1], "c_n": None if c_n is None else c_n[-1]}
    leaves.update(params)  # gradients of the parameters, under fusedrnn's names
    ordered = {k: leaves[k] for k in INPUTS if k in leaves}
    return _gradients(problem, ordered, outputs)


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


def modules_available() -> bool:
    """True once fusedrnn has its drop-in modules."""
    import fusedrnn

    return all(hasattr(fusedrnn, n) for n in ("LSTM", "GRU", "RNN"))


def make_module_problem(case: ModuleCase, dtype: torch.dtype) -> Problem:
    """Weights (a torch.nn state_dict), inputs and upstream gradients, rounded to ``dtype``."""
    seed = zlib.crc32(case.id.encode())
    with torch.random.fork_rng(devices=[]):  # torch.nn's own initialisation, without touching the caller's RNG
        torch.manual_seed(seed)
        state = {k: v.detach().to(dtype).to(torch.float64) for k, v in case.build(nn).state_dict().items()}
    layer = make_problem(case.layer_case, dtype)  # x, lengths and one direction's state, reused
    T, B, _, H = case.shape
    g = torch.Generator().manual_seed(seed)
    hout = layer.inputs["h0"].shape[-1]
    states = MODULE_LAYERS * 2

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).to(torch.float64)

    inputs = {"x": layer.inputs["x"], "h0": rand(states, B, hout)}
    upstream = {"out": rand(T, B, 2 * hout), "h_n": rand(states, B, hout)}
    if case.cell.has_cell_state:
        inputs["c0"], upstream["c_n"] = rand(states, B, H), rand(states, B, H)
    inputs.update(state)
    return Problem(case, inputs, upstream, layer.lengths)


def run_module(problem: Problem, module: nn.Module, dtype: torch.dtype, device) -> Results:
    """Run ``module`` (loaded with the problem's weights) on its packed input; results as :func:`run_layer`'s."""
    module = module.to(device=device, dtype=dtype)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(problem.inputs[name])
    leaves = {k: problem.inputs[k].to(device=device, dtype=dtype).requires_grad_()
              for k in ("x", "h0", "c0") if k in problem.inputs}
    hx = (leaves["h0"], leaves["c0"]) if "c0" in leaves else leaves["h0"]
    seq = pack_padded_sequence(leaves["x"], torch.tensor(problem.lengths), enforce_sorted=False)
    out, state = module(seq, hx)
    out = pad_packed_sequence(out, total_length=problem.case.shape.T)[0]
    h_n, c_n = state if "c0" in leaves else (state, None)
    leaves.update(params)
    return _gradients(problem, leaves, {"out": out, "h_n": h_n, "c_n": c_n})


#: a module parameter's name -> the quantity its gradient is reported under (all layers and directions)
_PARAMETER_QUANTITY = {"weight_ih": "grad_w_ih", "weight_hh": "grad_w_hh", "bias_ih": "grad_b_ih",
                       "bias_hh": "grad_b_hh", "weight_hr": "grad_w_proj", "weight_ch": "grad_w_peep"}


def quantity_of(name: str) -> str:
    """``grad_weight_ih_l1_reverse`` -> ``grad_w_ih``; other names unchanged."""
    if name.startswith("grad_"):
        stem = name[len("grad_"):].split("_l")[0]
        return _PARAMETER_QUANTITY.get(stem, name)
    return name


# ----------------------------------------------------------------------------
# Errors and tolerances
# ----------------------------------------------------------------------------

DOCUMENTED_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
#: unit roundoff of the 16-bit formats: the slack added to the 2x rule
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
LOW_PRECISION = tuple(UNIT_ROUNDOFF)


def error(actual: torch.Tensor, expected: torch.Tensor) -> Tuple[float, float]:
    """(max abs error, max abs error / max |expected|); inf if ``actual`` has a NaN or inf."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"shape mismatch: got {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0, 0.0
    actual, expected = actual.to(torch.float64), expected.to(actual.device, torch.float64)
    if not bool(torch.isfinite(actual).all()):
        return float("inf"), float("inf")
    max_abs = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def tolerance(dtype: torch.dtype, baseline: Optional[float] = None) -> float:
    """Largest allowed relative error for ``dtype`` (module docstring), given a baseline's error."""
    if dtype in LOW_PRECISION:
        if baseline is None:
            raise ValueError(f"{dtype} needs a baseline error (the 2x rule)")
        return 2.0 * baseline + UNIT_ROUNDOFF[dtype]
    if dtype not in DOCUMENTED_TOLERANCE:
        raise ValueError(f"no tolerance for dtype {dtype}")
    bound = DOCUMENTED_TOLERANCE[dtype]
    return bound if baseline is None else max(bound, 2.0 * baseline)


def tolerance_rule(dtype: torch.dtype, baseline: Optional[str]) -> str:
    """The tolerance in words, for tables."""
    if dtype in LOW_PRECISION:
        return f"2x {baseline} {dtype_name(dtype)} + {UNIT_ROUNDOFF[dtype]:.0e}"
    bound = f"{DOCUMENTED_TOLERANCE[dtype]:.0e}"
    return bound if baseline is None else f"max({bound}, 2x {baseline} {dtype_name(dtype)})"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


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

    def _run(self, case, dtype: torch.dtype, implementation: str) -> Optional[Results]:
        """Results of ``"oracle:reference"``, ``"torch.nn"`` or a fusedrnn backend name, in ``dtype``."""
        problem = self.problem(case, dtype)
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

    def baseline(self, case, dtype: torch.dtype, name: str) -> Optional[Results]:
        """Results of the same-dtype baseline computation: the reference backend or torch.nn."""
        if name not in ("reference", "torch.nn"):
            raise ValueError(f"unknown baseline {name!r}; expected 'reference' or 'torch.nn'")
        return self._cached(("baseline", case, dtype, name), lambda: self._run(case, dtype, name))

    def unsupported(self, backend: str, case, dtype: torch.dtype) -> Optional[str]:
        """Why ``backend`` cannot run the case in ``dtype`` on this device, or None."""
        why = backends.unavailable_reason(backend)
        if why is not None:
            return why
        if isinstance(case, ModuleCase):
            case = case.layer_case
        problem = self.problem(case, dtype)
        tensors = {k: v.to(self.device, dtype) for k, v in problem.inputs.items()}
        weights = LayerWeights(*(tensors.get(n) for n in INPUTS[3:]))
        x = tensors["x"] if problem.lengths is None else tensors["x"].flatten(0, 1)
        return backends.get(backend).unsupported(case.cell, x, weights)

    def check(self, backend: str, case, dtype: torch.dtype, oracles: Sequence[str] = ORACLES,
              baseline: Optional[str] = "auto") -> CaseOutcome:
        """Compare ``backend`` with each oracle on ``case`` in ``dtype``.

        ``baseline`` names the same-dtype computation the 2x rule measures
        against: ``"auto"`` is the reference backend for 16-bit dtypes and none
        otherwise; ``"torch.nn"`` suits long sequences where float32 rounding
        in torch.nn itself exceeds 1e-5.
        """
        if baseline == "auto":
            baseline = "reference" if dtype in LOW_PRECISION else None
        outcome = CaseOutcome(backend, case, dtype, rule=tolerance_rule(dtype, baseline))
        if backend not in backends.names():
            raise ValueError(f"unknown fusedrnn backend {backend!r}; expected one of {backends.names()}")
        outcome.skipped = self.unsupported(backend, case, dtype)
        if outcome.skipped is not None:
            return outcome
        try:
            actual = self._run(case, dtype, backend)
        except Exception as exc:  # a crashing backend is a failure of the check, not of the checker
            outcome.crashed = f"{type(exc).__name__}: {exc}"
            return outcome
        base = None
        if baseline is not None:  # torch.nn lacks some variants: the reference backend stands in there
            base = self.baseline(case, dtype, baseline) or self.baseline(case, dtype, "reference")
        for oracle_name in oracles:
            expected = self.oracle(case, dtype, oracle_name)
            if expected is None:  # torch.nn has no such cell
                continue
            worst: Dict[str, ErrorRow] = {}  # per quantity, the tensor nearest its bound (module parameters)
            for name in expected:
                max_abs, rel = error(actual[name], expected[name])
                base_rel = error(base[name], expected[name])[1] if base is not None else None
                row = ErrorRow(quantity_of(name), oracle_name, max_abs, rel, tolerance(dtype, base_rel))
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
