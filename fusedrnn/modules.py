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
  a PackedSequence) per direction, forward first.  Nonzero zoneout runs on the reference backend so far.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import _dynamo_compat, functional
from ._module_checks import NOT_GIVEN, check_flag
from .cells import CellSpec, default_mode
from .rnn_base import FusedRNNBase, init_haste_biases

__all__ = ["FusedRNNBase", "LSTM", "GRU", "RNN", "Recurrent", "IndRNN", "LayerNormLSTM", "LayerNormGRU"]


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
    bidirectional=False, proj_size=0, device=None, dtype=None, *, peephole=False, backend="auto", zoneout=0.0)``

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
                 backend: str = "auto", zoneout: float = 0.0) -> None:
        super().__init__(CellSpec("lstm", "lstm"), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, peephole=peephole, backend=backend,
                         zoneout=zoneout)


class GRU(FusedRNNBase, nn.GRU):
    """Drop-in for :class:`torch.nn.GRU` (same arguments, parameters, inputs and outputs).

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, reset_after=True, backend="auto", zoneout=0.0)``

    ``reset_after=False`` applies the reset gate to h before the product with ``W_hn``
    (the original GRU); the parameters are the same as torch.nn.GRU's.
    """ + _GRU_CONVENTION

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, backend: str = "auto",
                 zoneout: float = 0.0, proj_size=NOT_GIVEN) -> None:
        if proj_size is not NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        check_flag("reset_after", reset_after)
        self.reset_after = reset_after
        mode = "reset_after" if reset_after else "reset_before"
        super().__init__(CellSpec("gru", mode), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout)

    def _extras_repr(self) -> str:
        return (", reset_after=False" if not self.reset_after else "") + super()._extras_repr()


class RNN(FusedRNNBase, nn.RNN):
    """Drop-in for :class:`torch.nn.RNN` (same arguments, parameters, inputs and outputs).

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0)``

    ``nonlinearity`` is ``'tanh'`` or ``'relu'``; like torch.nn.RNN it is the fourth positional
    argument, and it is fixed at construction (``mode``).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, backend: str = "auto",
                 zoneout: float = 0.0, proj_size=NOT_GIVEN) -> None:
        if proj_size is not NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        functional.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(CellSpec("rnn", nonlinearity), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout)


class Recurrent(FusedRNNBase):
    """A stack of any cell family of the cell table (:mod:`fusedrnn.cells`), built from its record alone.

    ``Recurrent(family, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, mode=None, peephole=False,
    backend="auto", zoneout=0.0)``

    The family's ``mode`` (default: the family's default mode) is the cell every layer-direction runs.
    Parameters as torch.nn's RNNs lay them out, ``len(record.gates)`` blocks of ``hidden_size`` rows
    stacked in each: ``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}[_reverse]``, ``bias_ih_l{k}[_reverse]``,
    ``bias_hh_l{k}[_reverse]`` (and ``weight_ch``, ``weight_hr`` where the record lists the peephole or the
    projection).  Inputs and outputs are torch.nn's: ``(output, h_n)``, or ``(output, (h_n, c_n))`` for a
    cell with a cell state, with ``hx`` then ``(h_0, c_0)``.  A family registered from outside the library
    (:func:`fusedrnn.cells.register` and :func:`fusedrnn.reference.register_step`) runs here at once, on the
    reference backend until a backend has kernels for it (docs/design.md section 11).

    Example::

        >>> gru = fusedrnn.Recurrent("gru", 10, 20, num_layers=2)   # the layout of fusedrnn.GRU
        >>> out, h_n = gru(torch.randn(5, 3, 10))
    """

    def __init__(self, family: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, mode: Optional[str] = None, peephole: bool = False,
                 backend: str = "auto", zoneout: float = 0.0) -> None:
        cell = CellSpec(family, default_mode(family) if mode is None else mode)
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, peephole=peephole, backend=backend, zoneout=zoneout)

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
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0)``

    Each unit has its own scalar recurrent weight: ``h' = act(W_ih x + b_ih + u * h + b_hh)``, ``u`` the
    vector ``weight_hh_l{k}[_reverse]`` of shape ``[hidden_size]`` (element-wise product), ``act`` ReLU
    (the paper's) or tanh (haste's).  Inputs and outputs are :class:`torch.nn.RNN`'s (batched, unbatched,
    ``PackedSequence``, ``h_0``; ``(output, h_n)``); dropout between layers as torch.nn; ``zoneout`` as
    haste's IndRNN (:mod:`fusedrnn.modules`' docstring).

    Parameters per layer-direction: ``weight_ih_l{k}`` ``[hidden_size, input_size]`` (the first layer;
    ``num_directions * hidden_size`` columns above it), ``weight_hh_l{k}`` ``[hidden_size]``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``[hidden_size]``.  Initialisation: torch.nn.RNN's
    (``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter, in registration order), then ``weight_hh`` redrawn
    from ``U(-0.5, 0.5)`` as haste does (``|u| < 1`` keeps h bounded over long sequences).  :meth:`load_haste_state_dict` loads
    the parameters of a ``haste_pytorch.IndRNN`` (tanh).

    Runs on the cpu backend's fused kernels for CPU tensors (csrc/cpu/diagonal_recurrence.h); on a GPU
    ``"auto"`` falls back to the reference backend with a once-only warning (GPU kernels to come).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "relu",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: str = "auto", zoneout: float = 0.0) -> None:
        functional.check_nonlinearity(nonlinearity, "indrnn")
        self.nonlinearity = nonlinearity
        super().__init__("indrnn", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, mode=nonlinearity, backend=backend, zoneout=zoneout)

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
    the cpu backend's fused kernels for CPU tensors (csrc/cpu/layer_norm_recurrence.h); on a GPU ``"auto"``
    falls back to the reference backend with a once-only warning (GPU kernels to come).
"""


def _blocks(t: Tensor, order, dim: int = 0) -> Tensor:
    """``t``'s gate blocks (``len(order)`` equal blocks along ``dim``) taken in ``order``."""
    chunks = t.chunk(len(order), dim)
    return torch.cat([chunks[i] for i in order], dim)


class LayerNormLSTM(_NamedRecurrent):
    __doc__ = """LSTM with layer-normalised pre-activations and cell state (haste's ``LayerNormLSTM``), stacked like
    :class:`torch.nn.LSTM`.

    ``LayerNormLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, forget_bias=1.0, backend="auto", zoneout=0.0)``
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
                 zoneout: float = 0.0) -> None:
        self.forget_bias = forget_bias  # read by reset_parameters, which the base's __init__ calls
        super().__init__("layer_norm_lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout)

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
    bidirectional=False, device=None, dtype=None, *, backend="auto", zoneout=0.0)``
    """ + _LAYER_NORM_DOC.format(
        G=3, twin="GRU", order="r, z, n", haste="LayerNormGRU",
        equations="""        r = σ(x̂_r + ĥ_r),  z = σ(x̂_z + ĥ_z),  n = tanh(x̂_n + r * ĥ_n)
        h' = (1 - z) * n + z * h
""",
        more="", forget="", shift="")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", zoneout: float = 0.0) -> None:
        super().__init__("layer_norm_gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, zoneout=zoneout)

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
