"""What a recurrent cell is, independently of how any backend computes it.

A :class:`CellSpec` names a cell family (``lstm``, ``gru``, ``rnn``) and its
variant (``mode``).  Everything else that differs between cells and that more
than one layer of the package needs is one :class:`CellRecord` per cell in
the cell table (:data:`CELLS`): the gate blocks the weight matrices stack, the
states, the layout of the saved activations, the optional weights, the
torch.nn twin.  Every Python module reads it; the C++ side keeps exactly one
copy (``csrc/include/fusedrnn/cell.h``), and tests/test_cell_table.py checks
that the two agree.  A new cell is one :func:`register` call (plus its
reference step in :mod:`fusedrnn.reference`); a backend says which cells it
runs (:meth:`fusedrnn.backends.base.Backend.runs`).

Equations (docs/design.md section 4; PyTorch's gate order is the contract):

* ``rnn``  (G=1), modes ``tanh`` / ``relu``:  ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``
* ``lstm`` (G=4, blocks i, f, g, o), mode ``lstm``::

      i = σ(a_i [+ w_ci*c]), f = σ(a_f [+ w_cf*c]), g = tanh(a_g)
      c' = f*c + i*g
      o = σ(a_o [+ w_co*c'])
      h' = o*tanh(c')            (then h' = W_hr h' with proj_size)

  the bracketed terms only with peepholes (``weight_ch``, blocks i, f, o).
* ``gru``  (G=3, blocks r, z, n), modes ``reset_after`` (PyTorch, cuDNN) and
  ``reset_before`` (Cho et al. 2014, the seed's form)::

      r = σ(a_r), z = σ(a_z)
      reset_after:  n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
      reset_before: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
      h' = (1-z)*n + z*h

  The seed writes ``h' = (1-z)*h + z*n``: the same function with z relabelled
  as 1-z.  We keep PyTorch's convention for both forms.
* ``indrnn`` (G=1; Li et al. 2018), modes ``relu`` / ``tanh``, an element-wise
  recurrent weight ``u = weight_hh`` of shape ``[H]`` (``recurrent="diagonal"``)::

      h' = act(W_ih x + b_ih + u*h + b_hh)

* ``layer_norm_lstm`` (G=4, blocks i, f, g, o; Ba et al. 2016 as haste's
  ``LayerNormLSTM`` computes it) and ``layer_norm_gru`` (G=3, blocks r, z, n;
  haste's ``LayerNormGRU``, PyTorch's reset_after form), with
  ``LN(v; γ, β) = (v - mean(v)) / sqrt(var(v) + 1e-5) * γ (+ β)`` over the
  *whole* row of G*H pre-activations (all gate blocks together: mean and
  biased variance per row, as haste and Ba et al.), the gains γ and shift β
  in ``w_extra`` (:class:`ExtraWeight`)::

      x̂ = LN(W_ih x; γ_ih) + b_ih,   ĥ = LN(W_hh h; γ_hh) + b_hh
      layer_norm_lstm:  i, f, g, o from a = x̂ + ĥ as the LSTM's
                        c' = f*c + i*g,  h' = o*tanh(LN(c'; γ_c, β_c))   (c' itself is carried)
      layer_norm_gru:   r = σ(x̂_r + ĥ_r), z = σ(x̂_z + ĥ_z), n = tanh(x̂_n + r*ĥ_n)
                        h' = (1-z)*n + z*h

  ``w_extra`` = ``[γ_ih (G*H), γ_hh (G*H)]`` (+ ``[γ_c (H), β_c (H)]`` for the LSTM).
* ``slstm`` (G=4, blocks i, f, z, o: FlashRNN's order; xLSTM's scalar-memory LSTM as FlashRNN's
  ``slstm`` kernels compute it), states h, c, n (normaliser), m (stabiliser), the recurrent weight
  block-diagonal by heads (``recurrent="block_diagonal"``: ``weight_hh`` ``[4*H, H/num_heads]``, each
  head's units read only that head's h)::

      ĩ, f̃, z̃, õ = the blocks of W_ih x + b_ih + R h + b_hh
      m' = ĩ where n = 0 (a unit's first step), else max(ĩ, m + logσ(f̃))
      i = min(1, exp(ĩ - m')),  f = min(1, exp(m + logσ(f̃) - m'))
      c' = f*c + i*tanh(z̃),  n' = max(f*n + i, 1),  h' = σ(õ) * c'/n'

  The layer carries c, n and m concatenated as its one cell state, ``3*H`` wide (:attr:`CellSpec.cell_state_blocks`).

Cells without kernels in every backend are outside :data:`BUILT_IN_CELLS`: IndRNN has the ``cpu``, ``cuda``
and ``triton`` backends' kernels (their ``cells``), the layer-normalised cells the ``cpu`` and ``triton``
backends', sLSTM the ``cpu`` and ``triton`` backends'; "auto" passes over a backend without a cell's kernels with its
once-only warning (docs/design.md section 11).

Saved activations ("workspace"), one row per input row, ``workspace_blocks * H``
wide, written by every backend's forward in this layout so the fake kernels
know its shape and tests can compare backends:

* lstm, layer_norm_lstm: ``[i, f, g, o, c']`` (gate activations and the new cell state)
* gru:  ``[r, z, n, k]`` with ``k = W_hn h + b_hn`` (reset_after) or ``k = r*h``
  (reset_before): the operand the backward needs for the n-gate's hidden part;
  layer_norm_gru likewise, ``k = ĥ_n``
* rnn, indrnn:  nothing (the activation's derivative follows from the output itself)
* slstm: ``[ĩ, f̃, z, o, c', n', m']``: the raw input and forget pre-activations, z = tanh(z̃), the output gate
  and the new states; the backward recomputes i and f from ĩ, f̃, m and m' bitwise as the forward computed
  them, and which branch m' took (FlashRNN's keeps i itself, and m' alone)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class ExtraWeight:
    """One vector of a cell's extra weights (``LayerWeights.w_extra``), ``blocks * hidden_size`` long.

    The modules register it as a parameter of its own, ``{name}_l{k}[_reverse]`` in a stack and
    ``{name}`` in a cell, initialised to ``init`` (a gain to one, a shift to zero); a layer call
    passes a cell's extra weights concatenated in the record's order as one tensor, ``w_extra``."""

    name: str
    blocks: int
    init: float


#: what a record's ``recurrent`` may be
RECURRENT_KINDS = ("matrix", "diagonal", "block_diagonal")


@dataclass(frozen=True)
class CellRecord:
    """Everything about one cell (a family and its mode) that is not how a backend computes it."""

    family: str
    mode: str
    #: the gate blocks stacked in ``weight_ih`` / ``weight_hh`` (and the biases), in order
    gates: Tuple[str, ...]
    #: the blocks of the saved activations (the "workspace"), each hidden_size wide, in order
    workspace: Tuple[str, ...]
    #: the recurrent states, ``h`` first; those after it (``c``, or sLSTM's ``c, n, m``) travel through the
    #: layers concatenated as one cell state (:attr:`CellSpec.cell_state_blocks`)
    states: Tuple[str, ...] = ("h",)
    #: optional weights the cell accepts besides the biases: "peephole" (``weight_ch``), "projection" (``weight_hr``)
    optional_weights: Tuple[str, ...] = ()
    #: blocks of the peephole vector (``weight_ch``), when it has one
    peephole_gates: Tuple[str, ...] = ()
    #: torch.nn.RNNBase.mode of the torch.nn twin (kept as the module's ``mode`` attribute, as in torch)
    torch_mode: Optional[str] = None
    #: whether torch.nn computes this cell itself (GRU reset_before shares GRU's mode but not its equations)
    torch_computes: bool = True
    #: the family's default mode (what torch.nn runs)
    default: bool = False
    #: whether the backends' backward ops compute its gradients (every built-in cell, and the cells with
    #: kernels of their own); else the ops differentiate its reference step with autograd (a cell that has
    #: only its reference step)
    hand_written_backward: bool = False
    #: the recurrent weight ``weight_hh``: "matrix" ``[G*H, Hout]`` (h W_hh^T), "diagonal" ``[G*H]``
    #: (u * h, element-wise: IndRNN), whose hidden side has no product, or "block_diagonal"
    #: ``[G*H, H/num_heads]`` (sLSTM's heads: only the non-zero blocks, row r's head that of its unit)
    recurrent: str = "matrix"
    #: weights beyond torch.nn's layout (layer-norm gains and shifts), in ``w_extra``'s order
    extra_weights: Tuple[ExtraWeight, ...] = ()

    def __post_init__(self):
        if self.recurrent not in RECURRENT_KINDS:
            raise ValueError(f"recurrent must be one of {RECURRENT_KINDS}, got {self.recurrent!r}")


#: The cell table: (family, mode) -> record, in registration order.
CELLS: Dict[Tuple[str, str], CellRecord] = {}


def register(record: CellRecord) -> CellRecord:
    """Add a cell to the table.  Its reference step goes to :func:`fusedrnn.reference.register_step`."""
    key = (record.family, record.mode)
    if key in CELLS:
        raise ValueError(f"cell {record.family}[{record.mode}] is registered already")
    if record.default and any(r.default for r in CELLS.values() if r.family == record.family):
        raise ValueError(f"family {record.family!r} has a default mode already")
    CELLS[key] = record
    return record


_LSTM_WORKSPACE = ("i", "f", "g", "o", "c'")
_GRU_GATES = ("r", "z", "n")
register(CellRecord("lstm", "lstm", gates=("i", "f", "g", "o"), workspace=_LSTM_WORKSPACE, states=("h", "c"),
                    optional_weights=("peephole", "projection"), peephole_gates=("i", "f", "o"), torch_mode="LSTM",
                    default=True, hand_written_backward=True))
# k = W_hn h + b_hn (reset_after) or r*h (reset_before): the operand the backward needs for the n-gate's hidden part
register(CellRecord("gru", "reset_after", gates=_GRU_GATES, workspace=("r", "z", "n", "k"), torch_mode="GRU",
                    default=True, hand_written_backward=True))
register(CellRecord("gru", "reset_before", gates=_GRU_GATES, workspace=("r", "z", "n", "k"), torch_mode="GRU",
                    torch_computes=False, hand_written_backward=True))
register(CellRecord("rnn", "tanh", gates=("a",), workspace=(), torch_mode="RNN_TANH", default=True,
                    hand_written_backward=True))
register(CellRecord("rnn", "relu", gates=("a",), workspace=(), torch_mode="RNN_RELU", hand_written_backward=True))

#: the families with kernels in every backend (a registered cell may add another); their graph ops
#: are the C++ extension's (csrc/graph_ops.cpp), with the schema that has no ``w_extra``
FAMILIES = tuple(dict.fromkeys(family for family, _ in CELLS))
#: the cells with kernels in every backend: what a backend runs unless it says otherwise
BUILT_IN_CELLS = frozenset(CELLS)

# The cells without kernels in every backend (they come one backend at a time: docs/design.md section 11).
# Their graph ops are defined from Python (fusedrnn.ops), with ``w_extra`` where they have extra weights.
#
# IndRNN (Li et al. 2018): one gate block, an element-wise recurrent weight u [H]; no saved activations
# (the activation's derivative follows from the output, as for the Elman RNN).  Kernels: the cpu backend's
# (csrc/cpu/diagonal_recurrence.h); its backward is written by hand there and in the reference.
register(CellRecord("indrnn", "relu", gates=("a",), workspace=(), recurrent="diagonal", default=True,
                    hand_written_backward=True))
register(CellRecord("indrnn", "tanh", gates=("a",), workspace=(), recurrent="diagonal", hand_written_backward=True))
#: IndRNN's cells, which the cpu backend runs beside the built-in ones (fusedrnn/backends/cpu.py)
INDRNN_CELLS = frozenset({("indrnn", "relu"), ("indrnn", "tanh")})
# Layer-normalised LSTM and GRU (Ba et al. 2016, as haste computes them): gains of the input and the
# recurrent pre-activations (each normalised over its whole G*H row), and for the LSTM the gain and
# shift of the cell state's normalisation before tanh.  Kernels: the cpu backend's
# (csrc/cpu/layer_norm_recurrence.h), backward included; the reference differentiates their steps
# with autograd (fusedrnn.reference.sequence_backward).
register(CellRecord("layer_norm_lstm", "layer_norm_lstm", gates=("i", "f", "g", "o"), workspace=_LSTM_WORKSPACE,
                    states=("h", "c"), default=True, hand_written_backward=True,
                    extra_weights=(ExtraWeight("ln_weight_ih", 4, 1.0), ExtraWeight("ln_weight_hh", 4, 1.0),
                                   ExtraWeight("ln_weight_c", 1, 1.0), ExtraWeight("ln_bias_c", 1, 0.0))))
register(CellRecord("layer_norm_gru", "layer_norm_gru", gates=_GRU_GATES, workspace=("r", "z", "n", "k"),
                    default=True, hand_written_backward=True,
                    extra_weights=(ExtraWeight("ln_weight_ih", 3, 1.0), ExtraWeight("ln_weight_hh", 3, 1.0))))
#: the layer-normalised cells, which the cpu and triton backends run beside the built-in ones
LAYER_NORM_CELLS = frozenset({("layer_norm_lstm", "layer_norm_lstm"), ("layer_norm_gru", "layer_norm_gru")})
#: the epsilon of every layer normalisation (haste's and torch.nn.LayerNorm's)
LAYER_NORM_EPS = 1e-5
# sLSTM (Beck et al. 2024, xLSTM; FlashRNN's "slstm" function): exponential input and forget gates kept finite
# by the stabiliser state m, a normaliser state n, heads with block-diagonal recurrent weights.  Its backward
# is written by hand in the reference.  Kernels: the cpu backend's (csrc/cpu/slstm_recurrence.h) and the
# triton backend's (fusedrnn/triton_kernels/slstm.py), backward included.
register(CellRecord("slstm", "slstm", gates=("i", "f", "z", "o"), workspace=("i~", "f~", "z", "o", "c'", "n'", "m'"),
                    states=("h", "c", "n", "m"), recurrent="block_diagonal", default=True, hand_written_backward=True))
#: sLSTM's cell, which the cpu and triton backends run beside the built-in ones
SLSTM_CELLS = frozenset({("slstm", "slstm")})


def families() -> tuple:
    """Every family in the table, registered ones included."""
    return tuple(dict.fromkeys(family for family, _ in CELLS))


def modes(family: str) -> tuple:
    return tuple(mode for f, mode in CELLS if f == family)


def check_family(family: str) -> None:
    """ValueError naming ``family`` unless the table has it."""
    if family not in families():
        raise ValueError(f"unknown cell family {family!r}; expected one of {families()}")


def default_mode(family: str) -> str:
    """The family's default mode (ValueError naming the family if it is unknown or has none)."""
    check_family(family)
    for record in CELLS.values():
        if record.family == family and record.default:
            return record.mode
    raise ValueError(f"cell family {family!r} has no default mode; name one of {modes(family)}")


def torch_twin(cell: "CellSpec") -> Optional[Tuple[str, dict]]:
    """The torch.nn class (its name in torch.nn) computing this cell and its constructor's extra
    arguments, or None where torch.nn has no such cell (GRU reset_before, a registered cell)."""
    record = cell.record
    if record.torch_mode is None or not record.torch_computes:
        return None
    if record.torch_mode.startswith("RNN_"):
        return "RNN", {"nonlinearity": record.torch_mode[len("RNN_"):].lower()}
    return record.torch_mode, {}


def all_specs() -> list:
    return [CellSpec(f, m) for f, m in CELLS]


@dataclass(frozen=True)
class CellSpec:
    """A cell family and its variant; hashable, so it can key caches.  Its facts come from the cell table."""

    family: str
    mode: str

    def __post_init__(self):
        if (self.family, self.mode) not in CELLS:
            check_family(self.family)
            raise ValueError(
                f"unknown mode {self.mode!r} for cell family {self.family!r}; expected one of {modes(self.family)}"
            )

    @property
    def record(self) -> CellRecord:
        return CELLS[(self.family, self.mode)]

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in ``weight_ih`` / ``weight_hh``."""
        return len(self.record.gates)

    @property
    def has_cell_state(self) -> bool:
        return "c" in self.record.states

    @property
    def cell_state_blocks(self) -> int:
        """Width of the cell state a layer carries, in units of hidden_size: the states after h concatenated
        (0 without one, 1 for the LSTM's c, 3 for sLSTM's c, n, m)."""
        return len(self.record.states) - 1

    @property
    def workspace_blocks(self) -> int:
        """Width of the saved activations, in units of hidden_size."""
        return len(self.record.workspace)

    @property
    def peephole_blocks(self) -> int:
        """Blocks of the diagonal peephole vector ``weight_ch`` (i, f, o)."""
        return len(self.record.peephole_gates)

    def recurrent_shape(self, hidden: int, hout: int, heads: int = 1) -> Tuple[int, ...]:
        """The shape of ``weight_hh``: ``[G*H, Hout]``, ``[G*H]`` for an element-wise recurrent weight, or
        ``[G*H, H/heads]`` for a block-diagonal one (``heads`` must divide H)."""
        if self.record.recurrent == "diagonal":
            return (self.gates * hidden,)
        if self.record.recurrent == "block_diagonal":
            return (self.gates * hidden, hidden // heads)
        return (self.gates * hidden, hout)

    @property
    def extra_blocks(self) -> int:
        """Length of ``w_extra`` (the cell's extra weights, concatenated), in units of hidden_size (0: none)."""
        return sum(e.blocks for e in self.record.extra_weights)

    def split_extra(self, w_extra, hidden: int) -> dict:
        """``w_extra`` as its named vectors (:class:`ExtraWeight`), in the record's order."""
        sizes = [e.blocks * hidden for e in self.record.extra_weights]
        return dict(zip((e.name for e in self.record.extra_weights), w_extra.split(sizes)))

    def __str__(self) -> str:
        return self.family if self.mode == self.family else f"{self.family}[{self.mode}]"
