"""The differential fuzzing campaign's shared parts: hypothesis profiles, the
strategies that draw module and cell configurations, and the harness that runs
one configuration on fusedrnn and on its oracle and compares everything.

Used by tests/test_fuzz_differential.py (backends ``reference`` and ``cpu``)
and tests/triton/test_triton_fuzz.py (``triton`` under the interpreter).

Oracles.  Every comparison is against a float64 computation on the very same
values (the float32 inputs and weights, upcast), so the error measured is the
backend's own rounding, not the oracle's:

* torch.nn's twin (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` and the cells), loaded
  with the same ``state_dict``, for everything torch.nn has;
* the ``reference`` backend of fusedrnn for the extras torch.nn lacks (LSTM
  peepholes, GRU ``reset_after=False``) and the cells it lacks (IndRNN, LayerNorm
  LSTM and GRU, sLSTM with its four states and heads: :data:`BEHAVIOUR_TWINS`).  For those, whether the call must
  raise is still torch.nn's decision: the twin without the extra (plain LSTM,
  GRU, RNN) is run too, and an exception there must be matched.  A backend
  without a cell's kernels is not judged on it (the example is rejected, as
  ``fusedrnn.testing.Checker`` skips it).

Error measure, per tensor: ``max |actual - expected| / max(1, max |expected|)``
(NaN or inf anywhere in ``actual``: inf; :func:`fusedrnn.testing.error` gives
the max-abs part).  That is the relative error over the whole tensor, except
that a tensor smaller than 1 is measured in absolute terms: the inputs and
states are uniform in +-1, so rounding errors have the size of the terms
summed, and a result that cancels to near zero carries them all (seen: one
hidden unit summing 40 products of size ~0.5 to 1e-3, off by 2 float32 ulps of
the terms, 4e-5 relative to itself).  The bounds are in :func:`tolerance`.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default; what ``make test`` runs:
derandomized, a small example count, no example database) and ``fuzz``
(``make fuzz``: random, :data:`FUZZ_FACTOR` times more examples and larger
sizes, failures kept under build/hypothesis so the next run replays them first;
reproduce a run with ``--hypothesis-seed=N``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from hypothesis import HealthCheck, assume, event, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn.testing import error

# ----------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[1]
#: ``make fuzz`` runs this many times the examples of ``make test``
FUZZ_FACTOR = int(os.environ.get("FUZZ_FACTOR", "20"))

_COMMON = dict(
    deadline=None,  # timing varies too much on a loaded 2-core machine to mean anything
    print_blob=True,  # a failure prints the @reproduce_failure line
    # the examples are slow by design (two modules, forward and backward each)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz", derandomize=False,
                          database=DirectoryBasedExampleDatabase(str(REPO / "build" / "hypothesis")), **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: expected 'ci' or 'fuzz'")
settings.load_profile(PROFILE)
FUZZING = PROFILE == "fuzz"


def examples(ci: int) -> settings:
    """Settings for a test that runs ``ci`` examples in ``make test`` (FUZZ_FACTOR times more under fuzz)."""
    return settings(max_examples=ci * FUZZ_FACTOR if FUZZING else ci)


# ----------------------------------------------------------------------------
# Tolerances
# ----------------------------------------------------------------------------


def tolerance(dtype: torch.dtype, depth: int) -> float:
    """Largest error (module docstring: relative, absolute below magnitude 1) against a float64 oracle.

    float64: 1e-10, the project's documented bound (fusedrnn.testing); the
    problems here are small (K <= ~100 terms per dot product, <= ~30 steps),
    so float64 rounding stays near 1e-14 and 1e-10 leaves four orders of slack.

    float32: the documented 1e-5 (about 170 units of float32 roundoff 6e-8),
    scaled by sqrt(depth), where depth = steps x layers is the length of the
    longest chain of dependent roundings (forward through time and layers, the
    backward back along it; weight gradients sum over it).  Rounding errors of
    a contracting recurrence add up like a random walk, hence the square root.
    Measured over 300 examples of the fuzz profile's sizes per backend and cpu
    strategy, the worst float32 error is 5e-7 x sqrt(depth): the bound leaves
    20x for unlucky examples and still fails a wrong gate, bias or step
    (errors of 1e-4 and up: see test_the_harness_catches_a_wrong_gate).
    """
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5 * max(1.0, depth) ** 0.5
    raise ValueError(f"no tolerance for {dtype}")


# ----------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------

#: variant -> (class name, constructor options, torch.nn has this exact module)
MODULE_VARIANTS: Dict[str, Tuple[str, dict, bool]] = {
    "lstm": ("LSTM", {}, True),
    "lstm-proj": ("LSTM", {}, True),  # proj_size drawn with the sizes
    "gru": ("GRU", {}, True),
    "rnn-tanh": ("RNN", {"nonlinearity": "tanh"}, True),
    "rnn-relu": ("RNN", {"nonlinearity": "relu"}, True),
    "lstm-peephole": ("LSTM", {"peephole": True}, False),
    "lstm-peephole-proj": ("LSTM", {"peephole": True}, False),
    "gru-reset-before": ("GRU", {"reset_after": False}, False),
    "indrnn-relu": ("IndRNN", {"nonlinearity": "relu"}, False),
    "indrnn-tanh": ("IndRNN", {"nonlinearity": "tanh"}, False),
    "layer-norm-lstm": ("LayerNormLSTM", {}, False),
    "layer-norm-gru": ("LayerNormGRU", {}, False),
    "slstm": ("SLSTM", {}, False),  # num_heads drawn with the sizes (a divisor of H)
}
#: fusedrnn's classes torch.nn lacks -> the torch.nn class that decides whether a call raises (same arguments,
#: inputs and states; its own parameters where theirs differ in shape: IndRNN's vector weight_hh)
BEHAVIOUR_TWINS = {"IndRNN": "RNN", "LayerNormLSTM": "LSTM", "LayerNormGRU": "GRU", "SLSTM": "LSTM",
                   "IndRNNCell": "RNNCell", "LayerNormLSTMCell": "LSTMCell", "LayerNormGRUCell": "GRUCell",
                   "SLSTMCell": "LSTMCell"}
#: the classes with a cell state
_WITH_CELL_STATE = ("LSTM", "LayerNormLSTM", "LSTMCell", "LayerNormLSTMCell", "SLSTM", "SLSTMCell")
#: the classes with states beyond h and c (sLSTM's normaliser n and stabiliser m), in hx's order after c
_MORE_STATES = {"SLSTM": ("n0", "m0"), "SLSTMCell": ("n0", "m0")}
#: the classes whose recurrent weight has heads (num_heads drawn as a divisor of H)
_WITH_HEADS = ("SLSTM", "SLSTMCell")
#: the variants with a ReLU (their float32 examples near a kink are rejected: reject_relu_kinks)
_RELU = ("rnn-relu", "indrnn-relu")
#: the options torch.nn lacks (dropped to build the twin that decides whether a call raises)
EXTRAS = ("peephole", "reset_after")
LAYOUTS = ("padded", "packed", "unbatched")


@dataclass(frozen=True)
class ModuleConfig:
    """One call of a stacked module: construction, sizes, input layout, dtype, and the data's seed."""

    variant: str
    num_layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    T: int
    B: int
    I: int
    H: int
    proj_size: int
    layout: str
    with_state: bool
    dtype: torch.dtype
    seed: int
    #: edit the outputs in place after the forward (as torch.nn allows) before the backward
    edit_outputs: bool = False
    #: heads of a block-diagonal recurrent weight (sLSTM's)
    num_heads: int = 1

    @property
    def cls(self) -> str:
        return MODULE_VARIANTS[self.variant][0]

    @property
    def has_twin(self) -> bool:
        return MODULE_VARIANTS[self.variant][2]

    @property
    def has_cell_state(self) -> bool:
        return self.cls in _WITH_CELL_STATE

    @property
    def more_states(self) -> Tuple[str, ...]:
        return _MORE_STATES.get(self.cls, ())

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def depth(self) -> int:
        return max(1, self.T) * self.num_layers

    def kwargs(self, extras: bool = True) -> dict:
        options = dict(MODULE_VARIANTS[self.variant][1])
        if not extras:
            options = {k: v for k, v in options.items() if k not in EXTRAS}
        if self.proj_size:
            options["proj_size"] = self.proj_size
        if extras and self.cls in _WITH_HEADS:
            options["num_heads"] = self.num_heads
        return dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    bidirectional=self.bidirectional, **options)


#: size ranges: small in ci (cheap, odd sizes and the 0/1 edges come first with hypothesis),
#: larger under fuzz to reach the blocked paths of the CPU kernels (16-wide tiles and more)
LIMITS = dict(T=30, B=40, I=40, H=80, layers=3) if FUZZING else dict(T=9, B=7, I=9, H=20, layers=3)


@st.composite
def module_configs(draw, dtypes=(torch.float32, torch.float64), variants=tuple(MODULE_VARIANTS),
                   T=None, B=None, layouts=LAYOUTS, edit_outputs=st.just(False), limits=None):
    """A :class:`ModuleConfig`; ``T`` and ``B`` are strategies (default: at least 1)."""
    lim = dict(LIMITS, **(limits or {}))
    variant = draw(st.sampled_from(variants))
    wants_proj = variant.endswith("-proj")
    H = draw(st.integers(2 if wants_proj else 1, lim["H"]))
    layout = draw(st.sampled_from(layouts))
    T_value = draw(T if T is not None else st.integers(1, lim["T"]))
    B_value = draw(B if B is not None else st.integers(1, lim["B"]))
    if layout == "unbatched":
        B_value = 1  # one sequence: x is [T, I]
    return ModuleConfig(
        variant=variant,
        num_layers=draw(st.integers(1, lim["layers"])),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        T=T_value, B=B_value, I=draw(st.integers(1, lim["I"])), H=H,
        proj_size=draw(st.integers(1, H - 1)) if wants_proj else 0,
        layout=layout,
        with_state=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        edit_outputs=draw(edit_outputs),
        num_heads=_draw_heads(draw, MODULE_VARIANTS[variant][0], H),
    )


def _draw_heads(draw, cls: str, H: int) -> int:
    """A divisor of H for a class with heads (1 otherwise, drawing nothing: other classes' examples are as before)."""
    if cls not in _WITH_HEADS or H == 0:
        return 1
    return draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]))


#: cell variant -> (class name, constructor options, torch.nn has this exact cell)
CELL_VARIANTS: Dict[str, Tuple[str, dict, bool]] = {
    "lstm": ("LSTMCell", {}, True),
    "gru": ("GRUCell", {}, True),
    "rnn-tanh": ("RNNCell", {"nonlinearity": "tanh"}, True),
    "rnn-relu": ("RNNCell", {"nonlinearity": "relu"}, True),
    "lstm-peephole": ("LSTMCell", {"peephole": True}, False),
    "gru-reset-before": ("GRUCell", {"reset_after": False}, False),
    "indrnn-relu": ("IndRNNCell", {"nonlinearity": "relu"}, False),
    "indrnn-tanh": ("IndRNNCell", {"nonlinearity": "tanh"}, False),
    "layer-norm-lstm": ("LayerNormLSTMCell", {}, False),
    "layer-norm-gru": ("LayerNormGRUCell", {}, False),
    "slstm": ("SLSTMCell", {}, False),
}


@dataclass(frozen=True)
class CellConfig:
    """Some steps of a cell module, the state fed back from step to step."""

    variant: str
    B: int
    I: int
    H: int
    bias: bool
    batched: bool
    with_state: bool
    steps: int
    dtype: torch.dtype
    seed: int
    num_heads: int = 1

    @property
    def cls(self) -> str:
        return CELL_VARIANTS[self.variant][0]

    @property
    def more_states(self) -> Tuple[str, ...]:
        return _MORE_STATES.get(self.cls, ())

    @property
    def has_twin(self) -> bool:
        return CELL_VARIANTS[self.variant][2]

    @property
    def has_cell_state(self) -> bool:
        return self.cls in _WITH_CELL_STATE

    @property
    def depth(self) -> int:
        return self.steps

    def kwargs(self, extras: bool = True) -> dict:
        options = dict(CELL_VARIANTS[self.variant][1])
        if not extras:
            options = {k: v for k, v in options.items() if k not in EXTRAS}
        if extras and self.cls in _WITH_HEADS:
            options["num_heads"] = self.num_heads
        return dict(bias=self.bias, **options)


@st.composite
def cell_configs(draw, dtypes=(torch.float32, torch.float64), variants=tuple(CELL_VARIANTS), empty=False,
                 limits=None):
    """A :class:`CellConfig`; ``empty``: at least one of B, I, H is 0 (torch.nn's cells accept all three)."""
    lim = dict(LIMITS, **(limits or {}))
    low = 0 if empty else 1
    sizes = [draw(st.integers(low, lim[k])) for k in ("B", "I", "H")]
    if empty and min(sizes) > 0:
        sizes[draw(st.integers(0, 2))] = 0
    batched = draw(st.booleans())
    if not batched:
        sizes[0] = 1  # one sample: x is [I]
        if empty and min(sizes) > 0:
            sizes[draw(st.integers(1, 2))] = 0
    B, I, H = sizes
    variant = draw(st.sampled_from(variants))
    return CellConfig(
        variant=variant, B=B, I=I, H=H, bias=draw(st.booleans()), batched=batched,
        with_state=draw(st.booleans()), steps=draw(st.integers(1, 3)), dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2 ** 31 - 1)), num_heads=_draw_heads(draw, CELL_VARIANTS[variant][0], H),
    )


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


class Data:
    """Random float64 values for a configuration, drawn from its seed (uniform in +-1, weights in
    +-1/sqrt(H) like torch.nn's initialisation), rounded to the configuration's dtype."""

    def __init__(self, seed: int, dtype: torch.dtype):
        self.g = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def rand(self, *shape, scale=1.0) -> torch.Tensor:
        return ((torch.rand(*shape, generator=self.g, dtype=torch.float64) * 2 - 1) * scale).to(self.dtype)


@dataclass
class Run:
    """What one implementation produced: outputs and gradients by name, or the exception it raised."""

    values: Dict[str, torch.Tensor] = field(default_factory=dict)
    #: exact metadata that must match (packed batch_sizes and indices)
    exact: Dict[str, torch.Tensor] = field(default_factory=dict)
    raised: Optional[BaseException] = None


def _weights(module: nn.Module, data: Data, hidden: int) -> Dict[str, torch.Tensor]:
    scale = 1.0 / max(1, hidden) ** 0.5
    return {name: data.rand(*p.shape, scale=scale) for name, p in module.named_parameters()}


def _upstream_loss(outputs: Dict[str, torch.Tensor], data: Data):
    """A fixed random upstream gradient for every output, as one scalar to differentiate."""
    loss = 0
    for name in sorted(outputs):
        out = outputs[name]
        loss = loss + (out * data.rand(*out.shape).to(out.dtype)).sum()
    return loss


def _gradients(loss, leaves: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    names = list(leaves)
    if not torch.is_tensor(loss) or not loss.requires_grad:
        raise AssertionError("no output requires grad: the outputs are cut off from the inputs and parameters")
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    # unused is a zero gradient (e.g. an empty batch): compared as zeros, shapes still checked
    return {f"grad_{n}": (torch.zeros_like(leaves[n]) if g is None else g) for n, g in zip(names, grads)}


# ----------------------------------------------------------------------------
# ReLU kinks
# ----------------------------------------------------------------------------
#
# A ReLU preactivation that lies within float32 rounding of 0 makes float32
# and float64 take different branches, and then every gradient flowing back
# through that unit-step differs by O(1) (seen under make fuzz: the cpu
# backend's float32 gradients 1% off, its float64 ones right to 1e-10, one
# preactivation 1.3e-8 from 0).  No float32 implementation can be judged
# there, so float32 ReLU examples with a preactivation that close to 0 are
# rejected (hypothesis draws others); :func:`relu_margin` finds them with its
# own float64 recurrence, written from the equations (independent of both
# libraries).


#: smallest safe |a| / sum|terms| of a float32 ReLU preactivation: float32 and float64 runs of the
#: same recurrence differ by at most 2.4e-7 of the terms (measured at the fuzz profile's largest
#: sizes, 3 layers x 2 directions x 30 steps: the error does not grow with depth), 8x to spare
KINK_THRESHOLD = 2e-6


def _relu_scan(x, h, W, U, b_ih, b_hh, valid):
    """One step: relu(a), and the smallest |a| / (|W||x| + |U||h| + |b|) over the valid rows; ``U`` a matrix, or
    IndRNN's vector (element-wise)."""
    diagonal = U.dim() == 1
    a = x @ W.t() + (h * U if diagonal else h @ U.t())
    terms = x.abs() @ W.abs().t() + (h.abs() * U.abs() if diagonal else h.abs() @ U.abs().t())
    for b in (b_ih, b_hh):
        if b is not None:
            a, terms = a + b, terms + b.abs()
    rel = (a.abs() / terms.clamp_min(1e-300))[valid]
    return torch.relu(a), (float(rel.min()) if rel.numel() else float("inf"))


def relu_margin(cfg, tensors) -> float:
    """The smallest relative distance of a ReLU preactivation from 0, over every evaluation of
    the configuration (module: every layer, direction, step and sequence; cell: every step)."""
    w = {k: v.double() for k, v in tensors["weights"].items()}
    margin = float("inf")
    if isinstance(cfg, CellConfig):
        h = tensors["h0"].double() if "h0" in tensors else None
        rows = cfg.B if cfg.batched else 1
        h = torch.zeros(rows, cfg.H, dtype=torch.float64) if h is None else h.reshape(rows, cfg.H)
        for x in tensors["xs"]:
            h, m = _relu_scan(x.double().reshape(rows, cfg.I), h, w["weight_ih"], w["weight_hh"], w.get("bias_ih"),
                              w.get("bias_hh"), torch.ones(rows, cfg.H, dtype=torch.bool))
            margin = min(margin, m)
        return margin
    x = tensors["x"].double()
    x = x.unsqueeze(1) if cfg.layout == "unbatched" else (x.transpose(0, 1) if cfg.batch_first else x)
    T, batch = x.shape[:2]
    lengths = tensors["lengths"] if cfg.layout == "packed" else torch.full((batch,), T)
    h0 = tensors["h0"].double().reshape(cfg.num_layers * cfg.directions, batch, cfg.H) if "h0" in tensors else None
    for layer in range(cfg.num_layers):
        outputs = []
        for direction in range(cfg.directions):
            key = f"l{layer}" + ("_reverse" if direction else "")
            h = torch.zeros(batch, cfg.H, dtype=torch.float64) if h0 is None else h0[layer * cfg.directions + direction]
            out = torch.zeros(T, batch, cfg.H, dtype=torch.float64)
            for t in (reversed(range(T)) if direction else range(T)):  # a sequence's reverse starts at its own end
                valid = (t < lengths).unsqueeze(1).expand(batch, cfg.H)
                h_new, m = _relu_scan(x[t], h, w[f"weight_ih_{key}"], w[f"weight_hh_{key}"],
                                      w.get(f"bias_ih_{key}"), w.get(f"bias_hh_{key}"), valid)
                margin = min(margin, m)
                h = torch.where(valid, h_new, h)
                out[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            outputs.append(out)
        x = torch.cat(outputs, dim=-1)
    return margin


def reject_relu_kinks(cfg, tensors) -> None:
    """hypothesis.assume that a float32 ReLU example has no preactivation within rounding of 0."""
    if cfg.variant not in _RELU or cfg.dtype != torch.float32:
        return
    near = relu_margin(cfg, tensors) < KINK_THRESHOLD
    event("float32 ReLU example rejected: a preactivation within rounding of 0" if near
          else "float32 ReLU example: no preactivation within rounding of 0")
    assume(not near)


# ----------------------------------------------------------------------------
# Running a stacked module
# ----------------------------------------------------------------------------


def build_module(cfg: ModuleConfig, library: str, dtype: torch.dtype, backend: Optional[str] = None,
                 extras: bool = True) -> nn.Module:
    """``library`` 'torch.nn' or 'fusedrnn'; the torch.nn twin has no extras by construction."""
    if library == "torch.nn":
        return getattr(nn, BEHAVIOUR_TWINS.get(cfg.cls, cfg.cls))(cfg.I, cfg.H, dtype=dtype, **cfg.kwargs(extras=False))
    return getattr(fusedrnn, cfg.cls)(cfg.I, cfg.H, dtype=dtype, backend=backend, **cfg.kwargs(extras))


def module_data(cfg: ModuleConfig, state_dict_of: nn.Module) -> Dict[str, torch.Tensor]:
    """Weights (named as ``state_dict_of``'s parameters), x, states and lengths, in cfg.dtype."""
    data = Data(cfg.seed, cfg.dtype)
    tensors = {"weights": _weights(state_dict_of, data, cfg.H)}
    hout = cfg.proj_size or cfg.H
    states = cfg.num_layers * cfg.directions
    if cfg.layout == "unbatched":
        tensors["x"] = data.rand(cfg.T, cfg.I)
        lead = (states,)
    else:
        tensors["x"] = data.rand(cfg.B, cfg.T, cfg.I) if cfg.batch_first else data.rand(cfg.T, cfg.B, cfg.I)
        lead = (states, cfg.B)
    if cfg.with_state:
        tensors["h0"] = data.rand(*lead, hout)
        if cfg.has_cell_state:
            tensors["c0"] = data.rand(*lead, cfg.H)
        tensors.update(_more_states(cfg, data, lead))
    if cfg.layout == "packed":
        # unsorted lengths in [1, T], one of them T (so the padded length is T)
        lengths = torch.randint(1, cfg.T + 1, (cfg.B,), generator=data.g)
        lengths[int(torch.randint(0, cfg.B, (1,), generator=data.g))] = cfg.T
        tensors["lengths"] = lengths
    return tensors


def _more_states(cfg, data: Data, lead) -> Dict[str, torch.Tensor]:
    """sLSTM's n0 and m0: a normaliser of at least 1 (what its recurrence keeps from zero states on, so a
    state no run of the cell produces is not asked for), a stabiliser in +-1."""
    if not cfg.more_states:
        return {}
    n0 = 1 + data.rand(*lead, cfg.H).abs() * 3
    return {"n0": n0, "m0": data.rand(*lead, cfg.H)}


#: names of the states a module takes and returns, in order
_STATE_NAMES = ("h0", "c0", "n0", "m0")


def _state_count(cfg, module: nn.Module) -> int:
    """How many states ``module`` takes: the torch.nn twin h (and c), fusedrnn's its record's."""
    if isinstance(module, (fusedrnn.modules.FusedRNNBase, fusedrnn.cell_modules.FusedRNNCellBase)):
        return 1 + (1 if cfg.has_cell_state else 0) + len(cfg.more_states)
    return 2 if cfg.has_cell_state else 1


def _hx(cfg, module: nn.Module, leaves: Dict[str, torch.Tensor]):
    """The states ``module`` takes from ``leaves``: None, h0, or a tuple."""
    if "h0" not in leaves:
        return None
    names = _STATE_NAMES[:_state_count(cfg, module)]
    return tuple(leaves[n] for n in names) if len(names) > 1 else leaves["h0"]


def run_module(cfg: ModuleConfig, module: nn.Module, tensors: Dict[str, torch.Tensor], dtype: torch.dtype,
               forward_only: bool = False, in_place: bool = False) -> Run:
    """Load the weights, run forward (and backward under a fixed upstream gradient) in ``dtype``."""
    run = Run()
    try:
        module.load_state_dict({k: v.to(dtype) for k, v in tensors["weights"].items()}, strict=True)
        count = _state_count(cfg, module)
        leaves = {k: tensors[k].to(dtype).requires_grad_() for k in ("x", *_STATE_NAMES[:count]) if k in tensors}
        x = leaves["x"]
        if cfg.layout == "packed":
            x = pack_padded_sequence(x, tensors["lengths"], batch_first=cfg.batch_first, enforce_sorted=False)
        out, state = module(x, _hx(cfg, module, leaves))
        if forward_only:
            return run
        if isinstance(out, PackedSequence):
            run.exact = {"batch_sizes": out.batch_sizes, "sorted_indices": out.sorted_indices,
                         "unsorted_indices": out.unsorted_indices}
            out = out.data
        outputs = {"out": out}
        # h_n, then c_n, n_n, m_n as the module has them
        outputs.update({f"{n[0]}_n": t for n, t in zip(_STATE_NAMES, state if count > 1 else (state,))})
        if cfg.edit_outputs:
            # what models do to an RNN's outputs (out.relu_(), masked_fill_): fusedrnn is edited in
            # place, the oracle out of place, so the values and gradients must still agree (an op
            # whose backward reads the tensor it returned would now read changed values)
            outputs = {k: (t.mul_(2.0) if in_place else t * 2.0) for k, t in outputs.items()}
        run.values = {k: v.detach() for k, v in outputs.items()}
        leaves.update(dict(module.named_parameters()))
        run.values.update(_gradients(_upstream_loss(outputs, Data(cfg.seed ^ 0x5EED, cfg.dtype)), leaves))
    except Exception as exc:  # noqa: BLE001 -- the exception is the result being compared
        run.raised = exc
    return run


def module_oracles(cfg: ModuleConfig, tensors) -> Tuple[Run, Run]:
    """(the run that decides whether the call raises, the float64 run that gives the values)."""
    twin = build_module(cfg, "torch.nn", torch.float64)
    behaviour = run_module(cfg, twin, _without_extras(cfg, tensors, twin), torch.float64,
                           forward_only=not cfg.has_twin)
    if cfg.has_twin:
        return behaviour, behaviour
    values = run_module(cfg, build_module(cfg, "fusedrnn", torch.float64, backend="reference"), tensors,
                        torch.float64)
    return behaviour, values


def _without_extras(cfg, tensors, twin: nn.Module):
    """The tensors with only the parameters the torch.nn twin has (peepholes, layer-norm gains dropped), in its
    shapes: where a parameter's differs (IndRNN's vector weight_hh), the twin's own (it decides only whether
    the call raises)."""
    own = dict(twin.named_parameters())
    return dict(tensors, weights={k: (v if v.shape == own[k].shape else own[k].detach().to(v.dtype))
                                  for k, v in tensors["weights"].items() if k in own})


def reject_few_unit_layer_norm(cfg) -> None:
    """hypothesis.assume that a float32 layer-normalised LSTM has one hidden unit or at least four.

    Its cell state is normalised over the H units of a row, whose gradient scales as 1/std(c'): over two
    units (normalised values +-1) or three, a row with close values amplifies float32 roundoff past
    :func:`tolerance`'s bound.  The reference backend's float32 fails two-unit examples as often as the cpu
    kernels; at three units the cpu kernels, whose gates are polynomials a few float32 ulp off
    (csrc/include/fusedrnn/gate_math.h) where torch's are about one, failed one example in 12 (a 3-layer
    bidirectional stack, 5% past the bound) and the reference none.  One unit normalises to exactly β_c."""
    if cfg.variant != "layer-norm-lstm" or cfg.dtype != torch.float32:
        return
    few = cfg.H in (2, 3)
    event("float32 layer-norm LSTM example rejected: c' normalised over 2 or 3 units" if few
          else "float32 layer-norm LSTM example: 1 or at least 4 units")
    assume(not few)


def reject_without_kernels(fused: nn.Module, backend: str) -> None:
    """hypothesis.assume that ``backend`` has kernels for the module's cell: one without is not judged on it
    (a named backend refuses the cell; "auto" would send it to the reference)."""
    runs = fusedrnn.backends.get(backend).runs(fused.cell if hasattr(fused, "cell") else fused._cell())
    event(f"{backend} runs the cell" if runs else f"{backend} has no kernels for the cell: example rejected")
    assume(runs)


def check_module(cfg: ModuleConfig, backend: str) -> None:
    """fusedrnn (``backend``, cfg.dtype) against the oracles: same exception type, or the same values."""
    fused = build_module(cfg, "fusedrnn", cfg.dtype, backend=backend)
    reject_without_kernels(fused, backend)
    reject_few_unit_layer_norm(cfg)
    # the weights are named after torch.nn's parameters where torch.nn has the module, so that
    # fusedrnn's load_state_dict is checked to accept exactly torch.nn's state_dict
    tensors = module_data(cfg, build_module(cfg, "torch.nn", cfg.dtype) if cfg.has_twin else fused)
    reject_relu_kinks(cfg, tensors)
    behaviour, expected = module_oracles(cfg, tensors)
    actual = run_module(cfg, fused, tensors, cfg.dtype, in_place=True)
    compare(cfg, behaviour, expected, actual)


# ----------------------------------------------------------------------------
# Running a cell module
# ----------------------------------------------------------------------------


def build_cell(cfg: CellConfig, library: str, dtype: torch.dtype, backend: Optional[str] = None,
               extras: bool = True) -> nn.Module:
    if library == "torch.nn":
        return getattr(nn, BEHAVIOUR_TWINS.get(cfg.cls, cfg.cls))(cfg.I, cfg.H, dtype=dtype, **cfg.kwargs(extras=False))
    return getattr(fusedrnn, cfg.cls)(cfg.I, cfg.H, dtype=dtype, backend=backend, **cfg.kwargs(extras))


def cell_data(cfg: CellConfig, state_dict_of: nn.Module) -> Dict[str, torch.Tensor]:
    data = Data(cfg.seed, cfg.dtype)
    lead = (cfg.B,) if cfg.batched else ()
    tensors = {"weights": _weights(state_dict_of, data, cfg.H),
               "xs": [data.rand(*lead, cfg.I) for _ in range(cfg.steps)]}
    if cfg.with_state:
        tensors["h0"] = data.rand(*lead, cfg.H)
        if cfg.has_cell_state:
            tensors["c0"] = data.rand(*lead, cfg.H)
        tensors.update(_more_states(cfg, data, lead))
    return tensors


def run_cell(cfg: CellConfig, cell: nn.Module, tensors, dtype: torch.dtype, forward_only: bool = False) -> Run:
    """``steps`` calls, each step's state fed to the next; every step's outputs and all gradients."""
    run = Run()
    try:
        cell.load_state_dict({k: v.to(dtype) for k, v in tensors["weights"].items()}, strict=True)
        count = _state_count(cfg, cell)
        leaves = {f"x{i}": x.to(dtype).requires_grad_() for i, x in enumerate(tensors["xs"])}
        for k in _STATE_NAMES[:count]:
            if k in tensors:
                leaves[k] = tensors[k].to(dtype).requires_grad_()
        state = _hx(cfg, cell, leaves)
        outputs = {}
        for i in range(cfg.steps):
            state = cell(leaves[f"x{i}"], state)
            for name, t in zip(_STATE_NAMES, state if count > 1 else (state,)):
                outputs[f"{name[0]}{i + 1}"] = t
        if forward_only:
            return run
        run.values = {k: v.detach() for k, v in outputs.items()}
        leaves.update(dict(cell.named_parameters()))
        run.values.update(_gradients(_upstream_loss(outputs, Data(cfg.seed ^ 0x5EED, cfg.dtype)), leaves))
    except Exception as exc:  # noqa: BLE001 -- the exception is the result being compared
        run.raised = exc
    return run


def check_cell(cfg: CellConfig, backend: str) -> None:
    fused = build_cell(cfg, "fusedrnn", cfg.dtype, backend=backend)
    reject_without_kernels(fused, backend)
    reject_few_unit_layer_norm(cfg)
    twin = build_cell(cfg, "torch.nn", torch.float64)
    tensors = cell_data(cfg, twin if cfg.has_twin else fused)
    reject_relu_kinks(cfg, tensors)
    twin_tensors = _without_extras(cfg, tensors, twin)
    behaviour = run_cell(cfg, twin, twin_tensors, torch.float64, forward_only=not cfg.has_twin)
    expected = behaviour
    if not cfg.has_twin:
        expected = run_cell(cfg, build_cell(cfg, "fusedrnn", torch.float64, backend="reference"), tensors,
                            torch.float64)
    actual = run_cell(cfg, fused, tensors, cfg.dtype)
    compare(cfg, behaviour, expected, actual)


# ----------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def compare(cfg, behaviour: Run, expected: Run, actual: Run) -> None:
    """Raise AssertionError naming the configuration and every mismatch."""
    if behaviour.raised is not None:
        # torch.nn raises: fusedrnn must raise an exception the same ``except`` clause catches
        assert actual.raised is not None, (
            f"torch.nn raised {_describe(behaviour.raised)} but fusedrnn returned a result\n{cfg}")
        assert isinstance(actual.raised, type(behaviour.raised)), (
            f"torch.nn raised {_describe(behaviour.raised)}; fusedrnn raised {_describe(actual.raised)}\n{cfg}")
        return
    if expected.raised is not None:  # the reference oracle of an extra failed where torch.nn's twin ran
        raise AssertionError(f"the float64 reference raised {_describe(expected.raised)}\n{cfg}")
    if actual.raised is not None:
        raise AssertionError(f"torch.nn ran, fusedrnn raised {_describe(actual.raised)}\n{cfg}") from actual.raised
    problems = []
    if set(actual.values) != set(expected.values):
        problems.append(f"different results: {sorted(actual.values)} vs {sorted(expected.values)}")
    for name, want in expected.exact.items():
        got = actual.exact.get(name)
        if got is None or not torch.equal(got, want):
            problems.append(f"{name}: {got} != {want}")
    bound = tolerance(cfg.dtype, cfg.depth)
    for name in sorted(set(actual.values) & set(expected.values)):
        got, want = actual.values[name], expected.values[name]
        if got.dtype != cfg.dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {cfg.dtype}")
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
            continue
        max_abs, _ = error(got, want)  # inf for NaN or inf anywhere in ``got``
        scaled = max_abs / max(1.0, float(want.abs().max()) if want.numel() else 0.0)
        if not scaled <= bound:
            problems.append(f"{name}: error {scaled:.3g} > {bound:.3g} (max abs {max_abs:.3g}, "
                            f"max |expected| {float(want.abs().max()):.3g})")
    assert not problems, "\n".join([str(cfg)] + problems)


# ----------------------------------------------------------------------------
# Backend settings
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def backend_setting(backend: str, attribute: str, value):
    """Set an attribute of a registered backend instance (a cpu strategy, a Triton forward strategy); restore it."""
    instance = fusedrnn.backends.get(backend)
    before = getattr(instance, attribute)
    setattr(instance, attribute, value)
    try:
        yield
    finally:
        setattr(instance, attribute, before)
