"""Drop-in replacements for ``torch.nn.LSTMCell``, ``torch.nn.GRUCell`` and ``torch.nn.RNNCell``.

One step of a recurrence, for step-by-step decoding.  Same constructor
arguments, parameters (names, shapes, order, initialisation), inputs
(batched 2-D or unbatched 1-D, optional state), outputs and exceptions as
the torch.nn twins.  A step is the sequence op with T=1 (:func:`fusedrnn.functional.layer`).

Extras, keyword-only: ``backend="auto"``; ``LSTMCell(..., peephole=True)``
(parameter ``weight_ch``, shape ``[3*hidden_size]``, blocks i, f, o, registered
after ``bias_hh``); ``GRUCell(..., reset_after=False)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional
from .backends.base import LayerWeights
from .cells import CellSpec, modes
from ._autocast import autocast_dtype, autocast_off, cast
from ._module_checks import (attribute, check_backend_name, check_flag, check_state_tensor, check_weights_match,
                             checked_parameter, state_names)
from .layer import join_states, split_states
from .modules import _GRU_CONVENTION
from .rnn_base import check_num_heads, init_cell_parameters, init_forget_bias, init_haste_biases
from .torchscript import refuse_script

__all__ = ["FusedRNNCellBase", "LSTMCell", "GRUCell", "RNNCell", "IndRNNCell", "LayerNormLSTMCell",
           "LayerNormGRUCell", "SLSTMCell"]

# The cells' CellSpecs, built once: a step is a few microseconds of arithmetic, and building one (its
# check against the cell table) at each call was a visible share of a step's Python time.
_LSTM = CellSpec("lstm", "lstm")
_GRU_RESET_AFTER, _GRU_RESET_BEFORE = CellSpec("gru", "reset_after"), CellSpec("gru", "reset_before")
_RNN_BUILT_IN = {mode: CellSpec("rnn", mode) for mode in ("tanh", "relu")}
_PLAIN = (torch.Tensor, nn.Parameter)
_MISSING = object()


class FusedRNNCellBase(nn.RNNCellBase):
    """What the three cells share: a ``torch.nn.RNNCellBase`` with fused arithmetic.

    Each cell lists its torch.nn twin second among its bases (``class LSTMCell(FusedRNNCellBase,
    nn.LSTMCell)``), so ``isinstance(cell, nn.LSTMCell)`` and ``nn.RNNCellBase`` hold for client
    code, and what is defined here and in the cell wins over torch's.  torch's ``__init__`` is not
    run (ours registers the same parameters with the same RNG draws, plus the extras);
    ``reset_parameters`` and ``extra_repr`` are torch's (the latter extended with our options).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None,
                 *, peephole: bool = False, backend: str = "auto", layout: Optional[CellSpec] = None,
                 num_heads: int = 1) -> None:
        """``layout``: the cell whose record gives the parameters' shapes beyond torch.nn's (a diagonal
        recurrent weight); None for the torch.nn cells, whose layout is torch's.  ``num_heads``: the heads of
        a block-diagonal recurrent weight (sLSTM)."""
        factory_kwargs = {"device": device, "dtype": dtype}
        # nn.Module's __init__ only: the next one in the MRO is torch's (nn.LSTMCell.__init__), which
        # would register and draw the parameters without our extras (weight_ch)
        nn.Module.__init__(self)
        # torch.nn.RNNCellBase validates nothing here: bad sizes fail in torch.empty (RuntimeError/TypeError)
        check_backend_name(backend)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        self._layout = layout
        recurrent_shape = ((num_chunks * hidden_size, hidden_size) if layout is None
                           else layout.recurrent_shape(hidden_size, hidden_size, num_heads))
        self.weight_ih = nn.Parameter(torch.empty((num_chunks * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = nn.Parameter(torch.empty(recurrent_shape, **factory_kwargs))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if peephole:
            self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size, **factory_kwargs))
        # a cell's extra weights (layer-norm gains), each a parameter of its own, after torch.nn's
        self._extra_names = tuple(e.name for e in layout.record.extra_weights) if layout is not None else ()
        for extra in layout.record.extra_weights if layout is not None else ():
            setattr(self, extra.name, nn.Parameter(torch.empty(extra.blocks * hidden_size, **factory_kwargs)))
        self._param_shapes = {name: tuple(p.shape) for name, p in self.named_parameters(recurse=False)}
        self.reset_parameters()

    # torch.jit.script calls it on every submodule first: one clear error naming fusedrnn.revert
    __prepare_scriptable__ = refuse_script
    # the cell whose record gives the layout beyond torch.nn's, and its extra parameters' names (class-level
    # defaults: a cell pickled before they existed has neither)
    _layout: Optional[CellSpec] = None
    _extra_names: Tuple[str, ...] = ()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (the same draws as the torch.nn twin), then what the cell's record asks
        (:func:`fusedrnn.rnn_base.init_cell_parameters`)."""
        super().reset_parameters()
        if self._layout is not None:
            init_cell_parameters(self._layout, self.named_parameters())

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if getattr(self, "peephole", False):
            s += ", peephole=True"
        if getattr(self, "reset_after", True) is False:
            s += ", reset_after=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.__dict__.get("forget_bias") is not None:  # LSTMCell's (the layer-norm cells have their own repr)
            s += f", forget_bias={self.forget_bias!r}"
        return s

    # -- what each cell defines ---------------------------------------------

    def _cell(self) -> CellSpec:
        raise NotImplementedError

    #: the parameters a cell step reads, in LayerWeights' order (no projection: w_proj is None)
    _WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch")

    def _weights(self, dtype: Optional[torch.dtype]) -> LayerWeights:
        """The parameters, read now (so in-place edits and functional_call take effect), each checked
        against the shape the cell was built with; extra parameters concatenated into ``w_extra``."""
        weights = [cast(checked_parameter(self, name, None), dtype) for name in self._WEIGHT_NAMES]
        if not self._extra_names:
            return LayerWeights(*weights, None)
        return LayerWeights(*weights, None, torch.cat([cast(checked_parameter(self, name), dtype)
                                                       for name in self._extra_names]))

    # -- shared forward ------------------------------------------------------

    def _step(self, input: Tensor, states: Optional[Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
        """Checks as torch's cells (each once: functional.run_checked makes none of its own), then one
        step through the kernels (a sequence of T=1); returns the new states."""
        cell = self._cell()
        fast = self._direct_step(cell, input, states)
        if fast is not None:
            return fast
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        names = state_names(cell)
        if states is not None:
            for idx, value in enumerate(states):
                if value.dim() not in (1, 2):
                    what = f"hx[{idx}]" if cell.has_cell_state else "hidden"
                    raise ValueError(f"{type(self).__name__}: Expected {what} to be 1D or 2D, "
                                     f"got {value.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        cast_to = autocast_dtype(x.device)
        self._check_input(x, cast_to)
        if states is None:
            zeros = x.new_zeros((x.size(0), self.hidden_size))
            states = (zeros,) * len(names)
        else:
            states = tuple(s if is_batched else s.unsqueeze(0) for s in states)
            self._check_states(x, states, cast_to, names)
        weights = self._weights(cast_to)
        if cast_to is not None:
            x = x.to(cast_to)
            states = tuple(s.to(cast_to) for s in states)
        named = zip(self._WEIGHT_NAMES, weights)
        if self._extra_names:  # each extra parameter under its own name, not as w_extra
            named = [*named, *((n, cast(checked_parameter(self, n), cast_to)) for n in self._extra_names)]
        check_weights_match(self, named, x)
        h0, c0 = join_states(states)  # the layer's (h, c): sLSTM's c, n, m concatenated
        if cast_to is None:
            result = functional.run_checked(cell, x.unsqueeze(0), h0, c0, weights, None, False, self.backend)
        else:
            with autocast_off(x.device, cast_to):
                result = functional.run_checked(cell, x.unsqueeze(0), h0, c0, weights, None, False, self.backend)
        new_states = split_states(cell, result.h_n, result.c_n)
        return new_states if is_batched else tuple(s.squeeze(0) for s in new_states)

    def _direct_step(self, cell: CellSpec, x: Tensor, states: Optional[Tuple[Tensor, ...]]):
        """The new states from the backend's single-step op (:meth:`fusedrnn.backends.base.Backend.step_op`),
        or None where the call takes the general path below.

        A decoder calls its cell once per token, at sizes where a step is a few microseconds of arithmetic:
        the general path's Python (checks, casts, the op-less eager call, an autograd.Function) cost more
        than torch.nn's whole call (benchmarks/RESULTS.md, "Per-call overhead").  This path takes the
        common call only, a batched input and states of the module's sizes, dtype and device, the
        parameters as the module registered them, plain tensors in plain eager mode, and makes each of the
        general path's checks as a condition: anything unusual (a mistake that must raise torch.nn's
        error, autocast, a parametrized weight, a tensor subclass, tracing) goes the general way.  The
        weights are read at every call, as there (nothing of them is kept between calls).
        """
        if (type(x) not in _PLAIN or x.dim() != 2 or x.is_meta or not x.is_floating_point() or x.size(0) == 0
                or x.size(1) != self.input_size or self.input_size == 0 or self.hidden_size == 0
                or cell.cell_state_blocks > 1):  # (more states than (h, c): sLSTM's step runs as a sequence)
            return None
        params, shapes = self._parameters, self._param_shapes
        weights = []
        for name in self._WEIGHT_NAMES:
            w = params.get(name, _MISSING)
            if w is _MISSING:  # not registered: parametrized, or an option the cell was built without
                if name in shapes or name.startswith("bias"):
                    return None
                w = None
            elif w is not None and type(w) not in _PLAIN:
                return None
            weights.append(w)
        if states is None:
            states = (x.new_zeros((x.size(0), self.hidden_size)),) * (2 if cell.has_cell_state else 1)
        elif any(type(state) not in _PLAIN for state in states):
            return None
        # shapes, dtypes and devices: the op checks them (functional.run_step hands back None where it refuses)
        result = functional.run_step(cell, x, states[0], states[1] if cell.has_cell_state else None,
                                     LayerWeights(*weights, None), self.backend)
        if result is None:
            return None
        return result if cell.has_cell_state else result[:1]

    def _check_input(self, x: Tensor, cast_to: Optional[torch.dtype]) -> None:
        """ATen's check_rnn_cell_forward_input, then the dtype (RuntimeError, as torch raises)."""
        device = x.device
        for name, weight in self._parameters.items():  # named_parameters(recurse=False), without its generator
            if weight is not None and weight.device != device:
                raise RuntimeError(
                    f"{type(self).__name__}: input is on {x.device} but parameter {name} is on {weight.device}; "
                    "move the input or the module"
                )
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        weight_ih = attribute(self, "weight_ih")
        if cast_to is None and x.dtype != weight_ih.dtype:
            raise RuntimeError(
                f"{type(self).__name__}: input dtype ({x.dtype}) does not match weight dtype "
                f"({weight_ih.dtype}); convert the input or the module"
            )

    def _check_states(self, x: Tensor, states: Tuple[Tensor, ...], cast_to: Optional[torch.dtype],
                      names: Tuple[str, ...] = ("hx", "cx")) -> None:
        """ATen's check_rnn_cell_forward_hidden for each state (RuntimeError, torch's messages); ``names``: the
        states' (:func:`fusedrnn._module_checks.state_names`)."""
        batch, hidden = x.size(0), self.hidden_size
        for idx, state in enumerate(states):
            if batch != state.size(0):
                raise RuntimeError(f"Input batch size {batch} doesn't match hidden{idx} batch size {state.size(0)}")
            if state.dim() != 2 or state.size(1) != hidden:
                got = state.size(1) if state.dim() > 1 else "none"
                raise RuntimeError(f"hidden{idx} has inconsistent hidden_size: got {got}, expected {hidden}")
        device, dtype = x.device, x.dtype
        for state, name in zip(states, names):
            if state.device != device or (cast_to is None and state.dtype != dtype):  # the check's cheap part inline
                check_state_tensor(name, state, x, type(self).__name__, check_dtype=cast_to is None)


class LSTMCell(FusedRNNCellBase, nn.LSTMCell):
    """Drop-in for :class:`torch.nn.LSTMCell`: ``(h_1, c_1) = cell(input, (h_0, c_0))``.

    ``LSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None, *, peephole=False,
    backend="auto", forget_bias=None)``.  ``peephole=True`` adds the diagonal peepholes of :class:`fusedrnn.LSTM`
    (parameter ``weight_ch``, ``[3*hidden_size]``, blocks i, f, o); ``forget_bias`` (a number) initialises the
    forget gate's bias as :class:`fusedrnn.LSTM`'s does (None: torch.nn's draws exactly).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 peephole: bool = False, backend: str = "auto", forget_bias: Optional[float] = None) -> None:
        check_flag("peephole", peephole)
        self.forget_bias = forget_bias  # read by reset_parameters, which the base's __init__ calls
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype,
                         peephole=peephole, backend=backend)
        self.peephole = peephole

    def _cell(self) -> CellSpec:
        return _LSTM

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_forget_bias(_LSTM, self.named_parameters(), self.__dict__.get("forget_bias"))

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if hx is not None and not isinstance(hx, (tuple, list)):
            raise TypeError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0) of two tensors, "
                            f"got {type(hx).__name__}")
        if hx is not None and len(hx) != 2:  # torch.nn's exception type and message
            raise RuntimeError(f"lstm_cell expects two hidden states, got {len(hx)} in hx")
        h, c = self._step(input, None if hx is None else tuple(hx))
        return h, c


class GRUCell(FusedRNNCellBase, nn.GRUCell):
    """Drop-in for :class:`torch.nn.GRUCell`: ``h_1 = cell(input, h_0)``.

    ``GRUCell(input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True,
    backend="auto")``.  ``reset_after=False`` is the original GRU (Cho et al.).
    """ + _GRU_CONVENTION

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 reset_after: bool = True, backend: str = "auto") -> None:
        check_flag("reset_after", reset_after)
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype, backend=backend)
        self.reset_after = reset_after

    def _cell(self) -> CellSpec:
        return _GRU_RESET_AFTER if self.reset_after else _GRU_RESET_BEFORE

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(input, None if hx is None else (hx,))[0]


class RNNCell(FusedRNNCellBase, nn.RNNCell):
    """Drop-in for :class:`torch.nn.RNNCell`: ``h_1 = cell(input, h_0)``.

    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None, *,
    backend="auto")``.  As in torch.nn, ``nonlinearity`` is read at each call and an unknown one
    raises RuntimeError there.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype, backend=backend)
        self.nonlinearity = nonlinearity

    def _cell(self) -> CellSpec:
        spec = _RNN_BUILT_IN.get(self.nonlinearity)
        if spec is not None:
            return spec
        if self.nonlinearity not in modes("rnn"):  # torch.nn checks at each call, with this message
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return CellSpec("rnn", self.nonlinearity)  # an rnn mode registered after import

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(input, None if hx is None else (hx,))[0]


class IndRNNCell(FusedRNNCellBase):
    """One step of :class:`fusedrnn.IndRNN`: ``h_1 = cell(input, h_0)``, for step-by-step decoding.

    ``IndRNNCell(input_size, hidden_size, bias=True, nonlinearity='relu', device=None, dtype=None, *,
    backend="auto")``: ``h' = act(W_ih x + b_ih + u * h + b_hh)``.  Parameters ``weight_ih``
    ``[hidden_size, input_size]``, ``weight_hh`` ``[hidden_size]`` (u, element-wise), ``bias_ih``,
    ``bias_hh`` ``[hidden_size]``: a layer-direction of :class:`fusedrnn.IndRNN` under the names of
    torch.nn's cells, initialised as it is.  Inputs and outputs as :class:`torch.nn.RNNCell` (batched 2-D
    or unbatched 1-D input, optional state).  Runs on the cpu backend's fused kernels (each step as a
    sequence of one step) for CPU tensors, on the triton backend's for CUDA tensors.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "relu",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        functional.check_nonlinearity(nonlinearity, "indrnn")
        cell = CellSpec("indrnn", nonlinearity)
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype, backend=backend,
                         layout=cell)
        self.nonlinearity = nonlinearity
        self._cell_spec = cell

    def _cell(self) -> CellSpec:
        return self._cell_spec

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.nonlinearity != "relu":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(input, None if hx is None else (hx,))[0]


class _LayerNormCell(FusedRNNCellBase):
    """What the two layer-normalised cells share: the layout and initialisation of a layer-direction of their
    stacked module, under the names of torch.nn's cells."""

    def __init__(self, family: str, input_size: int, hidden_size: int, bias: bool, device, dtype, backend: str,
                 forget_bias: Optional[float] = None) -> None:
        cell = CellSpec(family, family)
        self.forget_bias = forget_bias  # read by reset_parameters, which the base's __init__ calls
        super().__init__(input_size, hidden_size, bias, num_chunks=cell.gates, device=device, dtype=dtype,
                         backend=backend, layout=cell)

    def _cell(self) -> CellSpec:
        return self._layout

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_haste_biases(self._layout, self.named_parameters(), self.forget_bias)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self._layout.has_cell_state and self.forget_bias != 1.0:  # the LSTM cell's default is haste's, 1.0
            s += f", forget_bias={self.forget_bias!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


class LayerNormLSTMCell(_LayerNormCell):
    """One step of :class:`fusedrnn.LayerNormLSTM`: ``(h_1, c_1) = cell(input, (h_0, c_0))``.

    ``LayerNormLSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None, *, forget_bias=1.0,
    backend="auto")``.  Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (torch.nn.LSTMCell's),
    ``ln_weight_ih``, ``ln_weight_hh`` ``[4*hidden_size]``, ``ln_weight_c``, ``ln_bias_c`` ``[hidden_size]``:
    a layer-direction of the stacked module, initialised as it is.  Runs on the cpu backend's fused kernels
    (each step as a sequence of one step) for CPU tensors, on the triton backend's for CUDA tensors.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 forget_bias: Optional[float] = 1.0, backend: str = "auto") -> None:
        super().__init__("layer_norm_lstm", input_size, hidden_size, bias, device, dtype, backend, forget_bias)

    forward = LSTMCell.forward


class LayerNormGRUCell(_LayerNormCell):
    """One step of :class:`fusedrnn.LayerNormGRU`: ``h_1 = cell(input, h_0)``.

    ``LayerNormGRUCell(input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto")``.
    Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (torch.nn.GRUCell's), ``ln_weight_ih``,
    ``ln_weight_hh`` ``[3*hidden_size]``: a layer-direction of the stacked module, initialised as it is.  Runs
    on the cpu backend's fused kernels (each step as a sequence of one step) for CPU tensors, on the reference
    backend elsewhere.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        super().__init__("layer_norm_gru", input_size, hidden_size, bias, device, dtype, backend)

    forward = GRUCell.forward


class SLSTMCell(FusedRNNCellBase):
    """One step of :class:`fusedrnn.SLSTM`: ``(h_1, c_1, n_1, m_1) = cell(input, (h_0, c_0, n_0, m_0))``.

    ``SLSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None, *, num_heads=1, backend="auto")``.
    Parameters ``weight_ih`` ``[4*hidden_size, input_size]``, ``weight_hh`` ``[4*hidden_size,
    hidden_size/num_heads]`` (the heads' diagonal blocks), ``bias_ih``, ``bias_hh`` ``[4*hidden_size]``: a
    layer-direction of the stacked module under the names of torch.nn's cells, initialised as it is.  Batched
    2-D or unbatched 1-D input; ``hx`` the four states (None: zeros).  Kernels as :class:`fusedrnn.SLSTM`'s.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 num_heads: int = 1, backend: str = "auto") -> None:
        cell = CellSpec("slstm", "slstm")
        check_num_heads(cell, num_heads, hidden_size)
        super().__init__(input_size, hidden_size, bias, num_chunks=cell.gates, device=device, dtype=dtype,
                         backend=backend, layout=cell, num_heads=num_heads)
        self.num_heads = num_heads

    def _cell(self) -> CellSpec:
        return self._layout

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.num_heads != 1:
            s += f", num_heads={self.num_heads}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        if hx is not None and not isinstance(hx, (tuple, list)):
            raise TypeError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0, n_0, m_0) of four tensors, "
                            f"got {type(hx).__name__}")
        if hx is not None and len(hx) != 4:  # as LSTMCell's count check
            raise RuntimeError(f"slstm_cell expects four hidden states, got {len(hx)} in hx")
        return self._step(input, None if hx is None else tuple(hx))
