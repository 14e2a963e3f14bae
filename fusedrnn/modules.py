"""Drop-in replacements for ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN``, and
:class:`Recurrent`, the same stacked module for any family of the cell table.

Same constructor arguments (positional order and defaults), parameter names,
shapes, registration order and initialisation (the same RNG draws in the
same order), same ``state_dict``, forward inputs and outputs, warnings and
exceptions as their torch.nn twins; the arithmetic runs through
:func:`fusedrnn.functional.layer`, one op call per layer-direction.  What the
classes share, and how they subclass torch's, is :mod:`fusedrnn.rnn_base`.

Extras beyond torch.nn, keyword-only after torch's arguments:

* ``backend="auto"`` on every class (:mod:`fusedrnn.backends`);
* ``LSTM(..., peephole=True)``: diagonal peepholes, one parameter
  ``weight_ch_l{k}[_reverse]`` of shape ``[3*hidden_size]`` (blocks i, f, o)
  per layer-direction, registered right after ``bias_hh_l{k}[_reverse]``;
* ``GRU(..., reset_after=False)``: the original GRU of Cho et al.;
* ``RNN`` with ``nonlinearity`` ``'tanh'`` or ``'relu'`` (as torch.nn);
* ``zoneout=0.0`` on every class (haste's zoneout of the hidden state, :mod:`fusedrnn.zoneout`): in
  training each unit of h keeps its previous value with probability ``zoneout`` at each step (a fresh
  mask per step; the output sequence carries the zoned-out h; an LSTM's c is not zoned out, as in
  haste), in evaluation ``h = zoneout * h_prev + (1 - zoneout) * h_new``.  The masks come from the
  default generator of the input's device (``torch.manual_seed`` reproduces them): for each layer,
  after the dropout of its input, one ``bernoulli_`` draw of ``[T, B, H_out]`` (``[rows, H_out]`` for
  a PackedSequence) per direction, forward first.  Nonzero zoneout runs in the cpu backend's kernels (every
  cell but sLSTM), on the reference backend for sLSTM and for CUDA tensors;
* ``dropconnect=0.0`` on every class (haste's ``dropout``: DropConnect of ``weight_hh``, :mod:`fusedrnn.dropconnect`):
  in training, each call runs each layer-direction with ``F.dropout(weight_hh_l{k}, dropconnect)``, one mask
  for the whole sequence, on every backend's kernels; in evaluation the weights as they are;
* ``LSTM(..., forget_bias=1.0)``: the forget gate's bias initialised to it (torch.nn's draws otherwise).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import _dynamo_compat, functional
from ._module_checks import NOT_GIVEN, check_flag
from .cells import CellSpec, default_mode
from .rnn_base import FusedRNNBase, init_forget_bias, init_haste_biases

__all__ = ["FusedRNNBase", "LSTM", "GRU", "RNN", "Recurrent", "IndRNN", "LayerNormLSTM", "LayerNormGRU", "SLSTM"]


_GRU_CONVENTION = """
    .. note::
        Gate convention: ``h' = (1 - z) * n + z * h``, as torch.nn.GRU, for both
        ``reset_after=True`` (PyTorch and cuDNN: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``)
        and ``reset_after=False`` (Cho et al. 2014: ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``).
        Some papers (and the seed of this project) write ``h' = (1 - z) * h + z * n``: the same
        function with z relabelled as 1 - z.  Weights trained under that convention need their
        z-blocks (rows ``H:2H`` of ``weight_ih``/``weight_hh`` and biases) negated to load here.
"""


class LSTM(FusedRNNBase, nn.LSTM):
    """Drop-in for :class:`torch.nn.LSTM` (same arguments, parameters, inputs and outputs).

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, peephole=False, backend="auto", zoneout=0.0,
    dropconnect=0.0, forget_bias=None)``

    ``forget_bias`` (a number): after torch.nn's initialisation, the forget block of ``bias_ih_l{k}`` set to it
    and that of ``bias_hh_l{k}`` to zero, so the forget gate starts with bias ``forget_bias`` (haste's
    ``forget_bias``, 1.0 in Jozefowicz et al.); None (the default) keeps torch.nn's draws exactly.
    ``peephole=True`` adds diagonal peephole connections (Gers & Schmidhuber):
    ``i = σ(. + w_ci*c)``, ``f = σ(. + w_cf*c)``, ``o = σ(. + w_co*c')``, one parameter
    ``weight_ch_l{k}[_reverse]`` of shape ``[3*hidden_size]`` (blocks i, f, o) per layer-direction.
    ``backend`` picks the implementation (:mod:`fusedrnn.backends`); ``"auto"`` the fastest available.

    Example::

        >>> lstm = fusedrnn.LSTM(10, 20, num_layers=2, batch_first=True)
        >>> out, (h_n, c_n) = lstm(torch.randn(3, 5, 10))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, peephole: bool = False,
                 backend: str = "auto", zoneout: float = 0.0, dropconnect: float = 0.0,
                 forget_bias: Optional[float] = None) -> None:
        self.forget_bias = forget_bias  # read by reset_parameters, which the base's __init__ calls
        super().__init__(CellSpec("lstm", "lstm"), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, peephole=peephole, backend=backend,
                         zoneout=zoneout, dropconnect=dropconnect)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_forget_bias(self.cell, self.named_parameters(), self.__dict__.get("forget_bias"))

    def _extras_repr(self) -> str:
        forget_bias = self.__dict__.get("forget_bias")
        return super()._extras_repr() + (f", forget_bias={forget_bias!r}" if forget_bias is not None else "")


class GRU(FusedRNNBase, nn.GRU):
    """Drop-in for :class:`torch.nn.GRU` (same arguments, parameters, inputs and outputs).

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, reset_after=True, backend="auto", zoneout=0.0,
    dropconnect=0.0)``

    ``reset_after=False`` applies the reset gate to h before the product with ``W_hn``
    (the original GRU); the parameters are the same as torch.nn.GRU's.
    """ + _GRU_CONVENTION

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, backend: str = "auto",
                 zoneout: float = 0.0, dropconnect: float = 0.0, proj_size=NOT_GIVEN) -> None:
        if proj_size is not NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        check_flag("reset_after", reset_after)
        self.reset_after = reset_after
        mode = "reset_after" if reset_after else "reset_before"
        super().__init__(CellSpec("gru", mode), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect)

    def _extras_repr(self) -> str:
        return (", reset_after=False" if not self.reset_after else "") + super()._extras_repr()


class RNN(FusedRNNBase, nn.RNN):
    """Drop-in for :class:`torch.nn.RNN` (same arguments, parameters, inputs and outputs).

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0,
    dropconnect=0.0)``

    ``nonlinearity`` is ``'tanh'`` or ``'relu'``; like torch.nn.RNN it is the fourth positional
    argument, and it is fixed at construction (``mode``).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, backend: str = "auto",
                 zoneout: float = 0.0, dropconnect: float = 0.0, proj_size=NOT_GIVEN) -> None:
        if proj_size is not NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        functional.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(CellSpec("rnn", nonlinearity), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect)


class Recurrent(FusedRNNBase):
    """A stack of any cell family of the cell table (:mod:`fusedrnn.cells`), built from its record alone.

    ``Recurrent(family, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, mode=None, peephole=False,
    backend="auto", zoneout=0.0, dropconnect=0.0, num_heads=1)``

    The family's ``mode`` (default: the family's default mode) is the cell every layer-direction runs.
    Parameters as torch.nn's RNNs lay them out, ``len(record.gates)`` blocks of ``hidden_size`` rows
    stacked in each: ``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}[_reverse]``, ``bias_ih_l{k}[_reverse]``,
    ``bias_hh_l{k}[_reverse]`` (and ``weight_ch``, ``weight_hr`` where the record lists the peephole or the
    projection).  Inputs and outputs are torch.nn's: ``(output, h_n)``, or ``(output, (h_n, c_n))`` for a
    cell with a cell state, with ``hx`` then ``(h_0, c_0)`` (every state of the record in order where it has
    more: sLSTM's ``(h, c, n, m)``).  ``num_heads``: the heads of a block-diagonal recurrent weight (sLSTM).  A family registered from outside the library
    (:func:`fusedrnn.cells.register` and :func:`fusedrnn.reference.register_step`) runs here at once, on the
    reference backend until a backend has kernels for it (docs/design.md section 11).

    Example::

        >>> gru = fusedrnn.Recurrent("gru", 10, 20, num_layers=2)   # the layout of fusedrnn.GRU
        >>> out, h_n = gru(torch.randn(5, 3, 10))
    """

    def __init__(self, family: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, mode: Optional[str] = None, peephole: bool = False,
                 backend: str = "auto", zoneout: float = 0.0, dropconnect: float = 0.0, num_heads: int = 1) -> None:
        cell = CellSpec(family, default_mode(family) if mode is None else mode)
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, peephole=peephole, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect, num_heads=num_heads)

    def extra_repr(self) -> str:
        return f"{self.cell.family!r}, " + super().extra_repr()

    def _extras_repr(self) -> str:
        own = "" if self.cell.record.default else f", mode={self.cell.mode!r}"
        return own + super()._extras_repr()

    def permute_hidden(self, hx: Union[Tensor, Tuple[Tensor, ...]], permutation: Optional[Tensor]):
        """torch.nn.RNNBase's, for each state of a tuple too (torch.nn.LSTM has its own for (h, c); a
        family here may have a cell state without being an LSTM)."""
        if not isinstance(hx, tuple):
            return super().permute_hidden(hx, permutation)
        permute = super().permute_hidden
        return tuple(permute(state, permutation) for state in hx)


class _NamedRecurrent(Recurrent):
    """A named class for one family of the cell table that torch.nn lacks: :class:`Recurrent` with the
    family fixed (its repr, like a torch.nn class's, shows the arguments alone)."""

    def extra_repr(self) -> str:
        return FusedRNNBase.extra_repr(self)


class IndRNN(_NamedRecurrent):
    """Independently recurrent network (Li et al. 2018), stacked like :class:`torch.nn.RNN`.

    ``IndRNN(input_size, hidden_size, num_layers=1, nonlinearity='relu', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0,
    dropconnect=0.0)``

    Each unit has its own scalar recurrent weight: ``h' = act(W_ih x + b_ih + u * h + b_hh)``, ``u`` the
    vector ``weight_hh_l{k}[_reverse]`` of shape ``[hidden_size]`` (element-wise product), ``act`` ReLU
    (the paper's) or tanh (haste's).  Inputs and outputs are :class:`torch.nn.RNN`'s (batched, unbatched,
    ``PackedSequence``, ``h_0``; ``(output, h_n)``); dropout between layers as torch.nn; ``zoneout`` as
    haste's IndRNN (:mod:`fusedrnn.modules`' docstring).

    Parameters per layer-direction: ``weight_ih_l{k}`` ``[hidden_size, input_size]`` (the first layer;
    ``num_directions * hidden_size`` columns above it), ``weight_hh_l{k}`` ``[hidden_size]``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``[hidden_size]``.  Initialisation: torch.nn.RNN's
    (``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter, in registration order), then ``weight_hh`` redrawn
    from ``U(-0.5, 0.5)`` as haste does (``|u| < 1`` keeps h bounded over long sequences).
    :meth:`load_haste_state_dict` loads the parameters of a ``haste_pytorch.IndRNN`` (tanh).

    Fused kernels on every backend (``cpu``: csrc/cpu/diagonal_recurrence.h; ``cuda``: csrc/cuda/diagonal.cu;
    ``triton``: fusedrnn/triton_kernels/diagonal.py), one pass over the sequence without a product per step.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "relu",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: str = "auto", zoneout: float = 0.0,
                 dropconnect: float = 0.0) -> None:
        functional.check_nonlinearity(nonlinearity, "indrnn")
        self.nonlinearity = nonlinearity
        super().__init__("indrnn", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, mode=nonlinearity, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect)

    def _extras_repr(self) -> str:
        # the nonlinearity in torch.nn.RNN's place (after the sizes), not as a mode
        return (f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity != "relu" else "") \
            + FusedRNNBase._extras_repr(self)

    def load_haste_state_dict(self, state_dict) -> None:
        """Load a ``haste_pytorch.IndRNN``'s ``state_dict`` into this (one-layer, one-direction, tanh) IndRNN.

        haste's ``kernel`` ``[input_size, hidden_size]`` is ``weight_ih_l0`` transposed, its
        ``recurrent_scale`` ``[hidden_size]`` is ``weight_hh_l0`` and its single ``bias`` is ``bias_ih_l0``
        (``bias_hh_l0`` is set to zero: only the sum of the two biases matters)."""
        _check_haste_target(self, "IndRNN", nonlinearity=("tanh", self.nonlinearity))
        with torch.no_grad():
            self.weight_ih_l0.copy_(state_dict["kernel"].t())
            self.weight_hh_l0.copy_(state_dict["recurrent_scale"])
            self.bias_ih_l0.copy_(state_dict["bias"])
            self.bias_hh_l0.zero_()


_LAYER_NORM_DOC = """
    Layer normalisation (Ba et al. 2016), as haste computes it: ``LN(v; γ, β) = (v - mean(v)) /
    sqrt(var(v) + 1e-5) * γ (+ β)`` over the whole row of ``{G}*hidden_size`` pre-activations (all gate
    blocks together), of the input side ``W_ih x`` and of the recurrent side ``W_hh h`` separately, each with
    its own gain and no shift (the biases follow them)::

        x̂ = LN(W_ih x; γ_ih) + b_ih,   ĥ = LN(W_hh h; γ_hh) + b_hh
{equations}
    Parameters per layer-direction: torch.nn.{twin}'s (``weight_ih_l{{k}}``, ``weight_hh_l{{k}}``,
    ``bias_ih_l{{k}}``, ``bias_hh_l{{k}}``, gate blocks in its order {order}), then ``ln_weight_ih_l{{k}}`` (γ_ih)
    and ``ln_weight_hh_l{{k}}`` (γ_hh), ``[{G}*hidden_size]``{more}.  Initialisation: the weights as torch.nn's
    (``U(-1/sqrt(H), 1/sqrt(H))``), the biases as haste's (zeros{forget}), the gains ones{shift}.
    :meth:`load_haste_state_dict` loads a ``haste_pytorch.{haste}``'s parameters (one layer, one direction).

    Inputs and outputs are torch.nn.{twin}'s (batched, unbatched, ``PackedSequence``, initial states);
    dropout between layers as torch.nn; ``zoneout`` as haste's (:mod:`fusedrnn.modules`' docstring).  Runs on
    the cpu backend's fused kernels for CPU tensors (csrc/cpu/layer_norm_recurrence.h), on the triton backend's
    for CUDA tensors (fusedrnn/triton_kernels/layer_norm.py; the cuda backend has none yet).
"""


def _blocks(t: Tensor, order, dim: int = 0) -> Tensor:
    """``t``'s gate blocks (``len(order)`` equal blocks along ``dim``) taken in ``order``."""
    chunks = t.chunk(len(order), dim)
    return torch.cat([chunks[i] for i in order], dim)


class LayerNormLSTM(_NamedRecurrent):
    __doc__ = """LSTM with layer-normalised pre-activations and cell state (haste's ``LayerNormLSTM``), stacked like
    :class:`torch.nn.LSTM`.

    ``LayerNormLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, forget_bias=1.0, backend="auto", zoneout=0.0,
    dropconnect=0.0)``
    """ + _LAYER_NORM_DOC.format(
        G=4, twin="LSTM", order="i, f, g, o", haste="LayerNormLSTM",
        equations="""        i, f, g, o = σ, σ, tanh, σ of x̂ + ĥ (blocks i, f, g, o)
        c' = f*c + i*g,   h' = o * tanh(LN(c'; γ_c, β_c))      (c' itself is carried)
""",
        more=", ``ln_weight_c_l{k}`` (γ_c) and ``ln_bias_c_l{k}`` (β_c), ``[hidden_size]``",
        forget=", the forget block of ``bias_ih`` set to ``forget_bias`` unless it is None",
        shift=", β_c zeros")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, forget_bias: Optional[float] = 1.0, backend: str = "auto",
                 zoneout: float = 0.0, dropconnect: float = 0.0) -> None:
        self.forget_bias = forget_bias  # read by reset_parameters, which the base's __init__ calls
        super().__init__("layer_norm_lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_haste_biases(self.cell, self.named_parameters(), self.forget_bias)

    def load_haste_state_dict(self, state_dict) -> None:
        """Load a ``haste_pytorch.LayerNormLSTM``'s ``state_dict`` into this one-layer, one-direction module.

        haste's ``kernel`` ``[input_size, 4H]`` and ``recurrent_kernel`` ``[H, 4H]`` (gate blocks i, g, f, o)
        are ``weight_ih_l0`` and ``weight_hh_l0`` transposed, blocks reordered to i, f, g, o; its one ``bias``
        is ``bias_ih_l0`` (``bias_hh_l0`` zero); ``gamma[0]`` and ``gamma[1]`` are ``ln_weight_ih_l0`` and
        ``ln_weight_hh_l0`` (reordered likewise: the row's mean and variance do not depend on the order),
        ``gamma_h`` and ``beta_h`` are ``ln_weight_c_l0`` and ``ln_bias_c_l0``."""
        _check_haste_target(self, "LayerNormLSTM")
        order = (0, 2, 1, 3)  # haste's i, g, f, o -> i, f, g, o
        with torch.no_grad():
            self.weight_ih_l0.copy_(_blocks(state_dict["kernel"].t(), order))
            self.weight_hh_l0.copy_(_blocks(state_dict["recurrent_kernel"].t(), order))
            self.bias_ih_l0.copy_(_blocks(state_dict["bias"], order))
            self.bias_hh_l0.zero_()
            self.ln_weight_ih_l0.copy_(_blocks(state_dict["gamma"][0], order))
            self.ln_weight_hh_l0.copy_(_blocks(state_dict["gamma"][1], order))
            self.ln_weight_c_l0.copy_(state_dict["gamma_h"])
            self.ln_bias_c_l0.copy_(state_dict["beta_h"])

    def _extras_repr(self) -> str:
        return (f", forget_bias={self.forget_bias!r}" if self.forget_bias != 1.0 else "") \
            + FusedRNNBase._extras_repr(self)


class LayerNormGRU(_NamedRecurrent):
    __doc__ = """GRU with layer-normalised pre-activations (haste's ``LayerNormGRU``; PyTorch's ``reset_after`` form and
    convention ``h' = (1 - z) * n + z * h``, which is haste's too), stacked like :class:`torch.nn.GRU`.

    ``LayerNormGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0, dropconnect=0.0)``
    """ + _LAYER_NORM_DOC.format(
        G=3, twin="GRU", order="r, z, n", haste="LayerNormGRU",
        equations="""        r = σ(x̂_r + ĥ_r),  z = σ(x̂_z + ĥ_z),  n = tanh(x̂_n + r * ĥ_n)
        h' = (1 - z) * n + z * h
""",
        more="", forget="", shift="")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", zoneout: float = 0.0, dropconnect: float = 0.0) -> None:
        super().__init__("layer_norm_gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout,
                         dropconnect=dropconnect)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_haste_biases(self.cell, self.named_parameters())

    def load_haste_state_dict(self, state_dict) -> None:
        """Load a ``haste_pytorch.LayerNormGRU``'s ``state_dict`` into this one-layer, one-direction module.

        haste's ``kernel`` ``[input_size, 3H]`` and ``recurrent_kernel`` ``[H, 3H]`` (gate blocks z, r, h) are
        ``weight_ih_l0`` and ``weight_hh_l0`` transposed, blocks reordered to r, z, n; ``bias`` and
        ``recurrent_bias`` are ``bias_ih_l0`` and ``bias_hh_l0``, ``gamma[0]`` and ``gamma[1]``
        ``ln_weight_ih_l0`` and ``ln_weight_hh_l0``, reordered likewise.  haste's update
        ``h' = z * h + (1 - z) * g`` is PyTorch's: z needs no conversion."""
        _check_haste_target(self, "LayerNormGRU")
        order = (1, 0, 2)  # haste's z, r, h -> r, z, n
        with torch.no_grad():
            self.weight_ih_l0.copy_(_blocks(state_dict["kernel"].t(), order))
            self.weight_hh_l0.copy_(_blocks(state_dict["recurrent_kernel"].t(), order))
            self.bias_ih_l0.copy_(_blocks(state_dict["bias"], order))
            self.bias_hh_l0.copy_(_blocks(state_dict["recurrent_bias"], order))
            self.ln_weight_ih_l0.copy_(_blocks(state_dict["gamma"][0], order))
            self.ln_weight_hh_l0.copy_(_blocks(state_dict["gamma"][1], order))


class SLSTM(_NamedRecurrent):
    """sLSTM, xLSTM's scalar-memory LSTM (Beck et al. 2024) as FlashRNN computes it, stacked like
    :class:`torch.nn.LSTM`.

    ``SLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, num_heads=1, backend="auto", zoneout=0.0, dropconnect=0.0)``

    Gate blocks i, f, z, o (FlashRNN's order) of ``W_ih x + b_ih + R h + b_hh``, exponential input and
    forget gates kept finite by the stabiliser state m, a normaliser state n::

        m' = ĩ where n = 0 (a unit's first step), else max(ĩ, m + logσ(f̃))
        i = min(1, exp(ĩ - m')),  f = min(1, exp(m + logσ(f̃) - m'))
        c' = f*c + i*tanh(z̃),  n' = max(f*n + i, 1),  h' = σ(õ) * c'/n'

    (the clamps are FlashRNN's kernels' and change nothing from zero initial states).  ``R`` is block-diagonal
    by ``num_heads`` heads (FlashRNN's and xLSTM's): unit ``k*D + d`` (head k, ``D = hidden_size/num_heads``)
    reads only its head's ``h[k*D:(k+1)*D]``; hidden_size must be a multiple of num_heads.

    States: h, c, n, m, each ``[num_layers * num_directions, batch, hidden_size]`` (unbatched: without the batch
    dimension), in FlashRNN's order: ``output, (h_n, c_n, n_n, m_n) = slstm(input, (h_0, c_0, n_0, m_0))``
    (``hx`` None: zeros; a FlashRNN state tensor ``[4, ...]`` is ``tuple(states)``).  Input as
    :class:`torch.nn.LSTM`'s (batched, unbatched, ``PackedSequence``); dropout between layers as torch.nn;
    ``zoneout`` of h as haste's (:mod:`fusedrnn.modules`' docstring).

    Parameters per layer-direction (``state_dict`` names): ``weight_ih_l{k}`` ``[4*hidden_size, input_size]``
    (``num_directions * hidden_size`` columns above the first layer), ``weight_hh_l{k}`` ``[4*hidden_size,
    hidden_size/num_heads]``: only R's non-zero blocks, row ``g*hidden_size + k*D + d`` holding gate g's row
    for unit d of head k over that head's D inputs (with one head, the dense ``[4*hidden_size, hidden_size]``
    of torch.nn's layout), ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``[4*hidden_size]`` (``_reverse`` for the
    backward direction).  Two biases, as every torch.nn RNN has, where FlashRNN has one: only their sum
    matters, and the modules, checks and ops keep one layout for every cell.  Initialisation: torch.nn's
    (``U(-1/sqrt(H), 1/sqrt(H))`` for each parameter).  :meth:`load_flashrnn_state_dict` loads FlashRNN's
    tensors, :meth:`flashrnn_state_dict` gives them back.

    Kernels: the ``cpu`` backend's (csrc/cpu/slstm_recurrence.h: a product per head fused with the gating,
    one parallel region per sequence), the ``triton`` backend's (fusedrnn/triton_kernels/slstm.py) and the
    reference (its backward by hand there, which the kernels follow); the ``cuda`` backend has none
    (``"auto"`` passes over it for CUDA tensors).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, num_heads: int = 1, backend: str = "auto", zoneout: float = 0.0,
                 dropconnect: float = 0.0) -> None:
        super().__init__("slstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend=backend, zoneout=zoneout, dropconnect=dropconnect,
                         num_heads=num_heads)

    def load_flashrnn_state_dict(self, state_dict, layer: int = 0, reverse: bool = False, *,
                                 recurrent_shape: str = "GHDP", bias_shape: str = "GHD") -> None:
        """Load FlashRNN's ``slstm`` tensors into layer-direction ``(layer, reverse)``.

        ``state_dict``: ``"R"``, the recurrent weight of ``flashrnn(Wx, R, b, function="slstm")``, ``[4,
        num_heads, D, D]`` in FlashRNN's default ``recurrent_shape`` "GHDP" (gate, head, output unit, input
        unit: ``R h`` sums over P), and ``"b"``, its bias ``[4, num_heads, D]`` ("GHD"); the other layouts
        FlashRNNConfig names (``recurrent_shape`` "HGDP", "HPGD", "HPDG"; ``bias_shape`` "HGD", "HDG") are
        permuted to those by their letters, as FlashRNN does.  ``R`` in "GHDP" is ``weight_hh`` seen as ``[4,
        num_heads, D, D]``; ``b`` is ``bias_ih`` (``bias_hh`` is set to zero: only their sum matters).
        FlashRNN takes the input side ``Wx`` ``[B, T, 4, num_heads, D]`` ready-made: ``"W"`` (optional), the
        ``[4*hidden_size, in]`` weight of the projection giving it (``x W^T`` viewed as ``[4, num_heads, D]``),
        is ``weight_ih``, left as it is where absent.  ValueError for a shape that does not fit this module."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        if not hasattr(self, "weight_ih" + suffix):
            raise ValueError(f"this module has no layer-direction {suffix[1:]!r}")
        H, heads = self.hidden_size, self.num_heads
        D = H // heads
        R = _as_layout(state_dict["R"], recurrent_shape, "GHDP", (4, heads, D, D), "R")
        b = _as_layout(state_dict["b"], bias_shape, "GHD", (4, heads, D), "b")
        if not self.bias and bool(b.ne(0).any()):
            raise ValueError("this module has bias=False, but FlashRNN's b is not zero")
        with torch.no_grad():
            getattr(self, "weight_hh" + suffix).copy_(R.reshape(4 * H, D))
            if "W" in state_dict:
                getattr(self, "weight_ih" + suffix).copy_(state_dict["W"])
            if self.bias:
                getattr(self, "bias_ih" + suffix).copy_(b.reshape(4 * H))
                getattr(self, "bias_hh" + suffix).zero_()

    def flashrnn_state_dict(self, layer: int = 0, reverse: bool = False) -> dict:
        """Layer-direction ``(layer, reverse)`` as FlashRNN's tensors (the inverse of
        :meth:`load_flashrnn_state_dict`): ``"W"`` ``[4*H, in]``, ``"R"`` ``[4, num_heads, D, D]`` ("GHDP"),
        ``"b"`` ``[4, num_heads, D]`` ("GHD", the sum of the two biases; zeros without biases)."""
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        heads = self.num_heads
        D = self.hidden_size // heads
        w_hh = getattr(self, "weight_hh" + suffix).detach()
        b = (getattr(self, "bias_ih" + suffix) + getattr(self, "bias_hh" + suffix)).detach() if self.bias \
            else w_hh.new_zeros(4 * self.hidden_size)
        return {"W": getattr(self, "weight_ih" + suffix).detach().clone(),
                "R": w_hh.reshape(4, heads, D, D).clone(), "b": b.reshape(4, heads, D).clone()}


def _as_layout(t: Tensor, layout: str, target: str, shape, name: str) -> Tensor:
    """``t``, laid out by the letters of ``layout`` (FlashRNN's shape strings), permuted to ``target``'s, checked
    against ``shape`` (ValueError naming it)."""
    if sorted(layout) != sorted(target):
        raise ValueError(f"{name}'s layout {layout!r} must order the letters of {target!r}")
    t = t.permute([layout.index(letter) for letter in target])
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"FlashRNN's {name} in layout {target} must have shape {list(shape)} for this module, "
                         f"got {list(t.shape)}")
    return t


def _check_haste_target(module: FusedRNNBase, haste_class: str, **required) -> None:
    """haste's layers have one layer, one direction and biases: a module that differs cannot take their
    weights (ValueError naming what differs).  ``required``: name -> (haste's value, this module's)."""
    wrong = {"num_layers": (1, module.num_layers), "bidirectional": (False, module.bidirectional),
             "bias": (True, module.bias), **required}
    for name, (theirs, ours) in wrong.items():
        if theirs != ours:
            raise ValueError(f"haste's {haste_class} has {name}={theirs!r}; this module has {name}={ours!r}")


# Dynamo refuses nn.RNN/GRU/LSTM instances, hence these classes, unless allow_rnn is set:
# set it for these classes only (fusedrnn._dynamo_compat)
_dynamo_compat.install()
