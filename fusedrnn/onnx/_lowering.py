"""One layer-direction of fusedrnn as ONNX operators, written once for both exporters.

:func:`lower` turns one call of ``fusedrnn::{family}_forward`` (its arguments, as values of
the graph being built) into ONNX nodes through a :class:`Builder`, which each exporter
implements over its own graph type (:mod:`fusedrnn.onnx._torchscript` for
``torch.onnx.export(dynamo=False)``, :mod:`fusedrnn.onnx._dynamo` for ``dynamo=True``).

Where the ONNX operator of the family expresses the cell, the call becomes that one operator,
``direction`` "forward" or "reverse", with sequence length and batch left dynamic:

* LSTM (peepholes too: ONNX's ``P``), GRU (``linear_before_reset=1`` is torch's
  ``reset_after`` form, ``0`` the original ``reset_before`` form), RNN (``Tanh`` / ``Relu``);
* the weights are the module's own, their gate blocks gathered into ONNX's order (ONNX: LSTM
  ``i o f c``, GRU ``z r h``, peepholes ``i o f``; torch and fusedrnn: LSTM ``i f g o``, GRU
  ``r z n``, peepholes ``i f o``), and the bias is ``b_ih || b_hh`` (ONNX's ``Wb || Rb``).

ONNX's LSTM has no projection, so an LSTM with ``proj_size`` becomes a ``Loop`` over the time
steps whose body is one step of the cell (peepholes included), after one product for every
step's input projection.

Only the outputs a module reads are real: the op's workspace (the activations a backward would
read) is never computed; an empty tensor stands in for it and for ``c_n`` outside LSTM.  Which
backend the op names, and whether it kept a workspace, do not reach the ONNX graph.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from .._export_limits import PACKED_INPUT_MESSAGE
from ..cells import CellSpec

__all__ = ["Builder", "lower"]

#: ONNX's gate order for each family, in the names of the cell table's gate blocks (fusedrnn.cells)
_ONNX_GATES = {"lstm": ("i", "o", "f", "g"), "gru": ("z", "r", "n"), "rnn": ("a",)}
#: ONNX LSTM's peephole order (P = [P_i, P_o, P_f]); fusedrnn's weight_ch is [i, f, o]
_ONNX_PEEPHOLES = ("i", "o", "f")
_ONNX_ACTIVATION = {"tanh": "Tanh", "relu": "Relu"}

Value = Any


class Builder:
    """What :func:`lower` needs from a graph under construction: this class adds the nodes through
    :meth:`_node` and the constants through :meth:`_constant`, which each exporter's subclass implements
    over its own graph type, with the methods that depend on the exporter's types (shapes, dtypes, loops)."""

    def op(self, op_type: str, *inputs: Optional[Value], outputs: int = 1, **attrs) -> Any:
        """Add an ONNX node of the default domain; None inputs are absent optional inputs (trailing ones are
        left out); attributes are Python ints, bools, strs, lists of them, or a graph (:meth:`loop`).  One
        output: a value; more: a tuple."""
        inputs = list(inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = {name: int(v) if isinstance(v, bool) else v for name, v in attrs.items()}
        results = list(self._node(op_type, inputs, outputs, attrs))
        return results[0] if outputs == 1 else tuple(results)

    def ints(self, values: Sequence[int]) -> Value:
        """A constant int64 tensor of rank 1."""
        return self._constant(list(values), "int64")

    def scalar_int(self, value: int) -> Value:
        """A constant int64 scalar (rank 0)."""
        return self._constant(value, "int64")

    def true(self) -> Value:
        """A constant bool scalar, true."""
        return self._constant(True, "bool")

    # -- what each exporter implements ----------------------------------------------------------------------

    def _node(self, op_type: str, inputs: List[Optional[Value]], outputs: int, attrs: dict) -> Sequence[Value]:
        """Add the node; returns its output values."""
        raise NotImplementedError

    def _constant(self, value, dtype: str) -> Value:
        """A constant tensor holding ``value`` (a Python scalar or list) of numpy's ``dtype`` name."""
        raise NotImplementedError

    def static_shape(self, value: Value) -> Tuple[int, ...]:
        """The shape of a value known while exporting (the weights')."""
        raise NotImplementedError

    def empty_like(self, value: Value) -> Value:
        """A tensor of shape [0] with ``value``'s dtype."""
        raise NotImplementedError

    def zeros_like(self, value: Value) -> Value:
        """Zeros of ``value``'s shape and dtype."""
        raise NotImplementedError

    def loop(self, trip_count: Value, carried: Sequence[Value], n_scan: int,
             body: Callable[["Builder", Value, List[Value]], Tuple[List[Value], List[Value]]]) -> Tuple[Value, ...]:
        """An ONNX ``Loop`` of ``trip_count`` iterations: ``body(builder, iteration, carried)`` returns the new
        carried values and ``n_scan`` per-iteration values; the result is the final carried values, then each
        scan output stacked along a new first axis."""
        raise NotImplementedError


def lower(b: Builder, family: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, reverse: bool,
          mode: str) -> Tuple[Value, Value, Value, Value]:
    """The four outputs of ``fusedrnn::{family}_forward`` (out, h_n, c_n, workspace) as ONNX values."""
    cell = CellSpec(family, mode)
    if batch_sizes is not None:
        raise RuntimeError(PACKED_INPUT_MESSAGE)
    if family not in _ONNX_GATES or (family == "rnn" and mode not in _ONNX_ACTIVATION):
        raise RuntimeError(
            f"fusedrnn: no ONNX export for the cell {cell}: only the built-in cells (LSTM, GRU both forms, RNN "
            "tanh/relu) have one")
    if w_proj is not None:
        out, h_n, c_n = _projected_lstm(b, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, reverse)
    else:
        out, h_n, c_n = _onnx_operator(b, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, reverse)
    return out, h_n, c_n if c_n is not None else b.empty_like(x), b.empty_like(x)


def _block_rows(order: Sequence[str], hidden: int, blocks: Sequence[str]) -> List[int]:
    """Row indices that gather ``blocks``-ordered blocks of ``hidden`` rows into ``order``."""
    return [blocks.index(name) * hidden + row for name in order for row in range(hidden)]


def _onnx_operator(b: Builder, cell: CellSpec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, reverse):
    """The ONNX operator of the family (LSTM, GRU, RNN) over the whole sequence, one direction."""
    hidden = b.static_shape(w_hh)[0] // cell.gates
    rows = b.ints(_block_rows(_ONNX_GATES[cell.family], hidden, cell.record.gates))
    axis0 = b.ints([0])

    def onnx_order(t):  # gate blocks in ONNX's order, with the leading num_directions axis
        return b.op("Unsqueeze", b.op("Gather", t, rows, axis=0), axis0)

    bias = None
    if b_ih is not None or b_hh is not None:
        b_ih = b_ih if b_ih is not None else b.zeros_like(b_hh)
        b_hh = b_hh if b_hh is not None else b.zeros_like(b_ih)
        bias = b.op("Concat", b.op("Gather", b_ih, rows, axis=0), b.op("Gather", b_hh, rows, axis=0), axis=0)
        bias = b.op("Unsqueeze", bias, axis0)
    attrs = dict(hidden_size=hidden, direction="reverse" if reverse else "forward")
    inputs = [x, onnx_order(w_ih), onnx_order(w_hh), bias, None, b.op("Unsqueeze", h0, axis0)]
    if cell.family == "lstm":
        inputs.append(b.op("Unsqueeze", c0, axis0))
        if w_peep is not None:
            peep_rows = b.ints(_block_rows(_ONNX_PEEPHOLES, hidden, cell.record.peephole_gates))
            inputs.append(b.op("Unsqueeze", b.op("Gather", w_peep, peep_rows, axis=0), axis0))
        y, y_h, y_c = b.op("LSTM", *inputs, outputs=3, **attrs)
    elif cell.family == "gru":
        attrs["linear_before_reset"] = 1 if cell.mode == "reset_after" else 0
        y, y_h = b.op("GRU", *inputs, outputs=2, **attrs)
        y_c = None
    else:
        attrs["activations"] = [_ONNX_ACTIVATION[cell.mode]]
        y, y_h = b.op("RNN", *inputs, outputs=2, **attrs)
        y_c = None
    # Y is [T, num_directions=1, B, H], Y_h and Y_c [1, B, H]
    out = b.op("Squeeze", y, b.ints([1]))
    h_n = b.op("Squeeze", y_h, axis0)
    c_n = b.op("Squeeze", y_c, axis0) if y_c is not None else None
    return out, h_n, c_n


def _reverse_time(b: Builder, t):
    """``t`` with its first (time) axis reversed."""
    return b.op("Slice", t, b.ints([-1]), b.ints([-(2 ** 63)]), b.ints([0]), b.ints([-1]))


def _projected_lstm(b: Builder, cell: CellSpec, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, reverse):
    """An LSTM with a projection (``h = W_hr (o * tanh(c))``), which ONNX's LSTM cannot express: every step's
    input projection in one product, then a ``Loop`` over the steps carrying ``(h, c)``, one step of the cell
    (docs/design.md section 4) per iteration, in fusedrnn's gate order."""
    hidden = b.static_shape(w_hh)[0] // cell.gates
    xp = b.op("MatMul", x, b.op("Transpose", w_ih, perm=[1, 0]))  # [T, B, 4H]
    for bias in (b_ih, b_hh):
        if bias is not None:
            xp = b.op("Add", xp, bias)
    if reverse:  # the loop runs forward over the reversed steps; its outputs are reversed back below
        xp = _reverse_time(b, xp)
    w_hh_t = b.op("Transpose", w_hh, perm=[1, 0])  # [P, 4H]
    w_proj_t = b.op("Transpose", w_proj, perm=[1, 0])  # [H, P]
    gate_split = b.ints([hidden] * cell.gates)
    names = cell.record.gates  # i, f, g, o
    peepholes = {}
    if w_peep is not None:
        parts = b.op("Split", w_peep, b.ints([hidden] * cell.peephole_blocks), axis=0, outputs=cell.peephole_blocks)
        peepholes = dict(zip(cell.record.peephole_gates, parts))
    steps = b.op("Gather", b.op("Shape", x), b.scalar_int(0), axis=0)

    def step(s: Builder, t, carried):
        h, c = carried
        a = s.op("Add", s.op("Gather", xp, t, axis=0), s.op("MatMul", h, w_hh_t))  # [B, 4H]
        a = dict(zip(names, s.op("Split", a, gate_split, axis=1, outputs=cell.gates)))
        for gate in ("i", "f"):
            if gate in peepholes:
                a[gate] = s.op("Add", a[gate], s.op("Mul", peepholes[gate], c))
        c_new = s.op("Add", s.op("Mul", s.op("Sigmoid", a["f"]), c),
                     s.op("Mul", s.op("Sigmoid", a["i"]), s.op("Tanh", a["g"])))
        o = a["o"] if "o" not in peepholes else s.op("Add", a["o"], s.op("Mul", peepholes["o"], c_new))
        h_new = s.op("MatMul", s.op("Mul", s.op("Sigmoid", o), s.op("Tanh", c_new)), w_proj_t)
        return [h_new, c_new], [s.op("Identity", h_new)]

    h_n, c_n, out = b.loop(steps, [h0, c0], 1, step)
    if reverse:
        out = _reverse_time(b, out)
    return out, h_n, c_n
