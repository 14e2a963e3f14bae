"""The stacked, optionally bidirectional recurrent module every drop-in class and :class:`fusedrnn.Recurrent` is.

:class:`FusedRNNBase` is a ``torch.nn.RNNBase`` whose arithmetic runs through
:func:`fusedrnn.functional.layer`, one op call per layer-direction; the cell it
runs (a :class:`fusedrnn.cells.CellSpec`) and the cell table decide the rest:
the gate blocks the weights stack, the states, the optional weights.

The drop-in classes (:mod:`fusedrnn.modules`) subclass their torch.nn twin as well
(``LSTM`` is a ``torch.nn.LSTM`` and a ``torch.nn.RNNBase``, and so on), so that
client code branching on ``isinstance(m, nn.LSTM)`` / ``nn.GRU`` / ``nn.RNNBase``
treats them as the layers they replace.  torch's ``__init__`` is not run (it would
build cuDNN's flat weights); the construction here registers the same parameters
with the same RNG draws.  torch.nn's helpers are inherited where they work on this
layout (``check_forward_args``, ``check_input``, ``get_expected_hidden_size``,
``get_expected_cell_size``, ``check_hidden_size``, ``permute_hidden``,
``all_weights``, ``reset_parameters``) and overridden where they maintain torch's
cached flat-weight list, which these classes do not keep (``_flat_weights`` is
computed at each access): see "torch.nn.RNNBase's flat-weight cache" below.
torch._dynamo refuses to trace instances of torch's RNN classes unless
``torch._dynamo.config.allow_rnn`` is set; for these classes alone
:mod:`fusedrnn._dynamo_compat` sets it while Dynamo wraps the module, so
``torch.compile(fullgraph=True)`` works on a model holding them.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from ._export_limits import check_not_exporting_packed
from ._autocast import autocast_dtype, autocast_off, cast
from ._module_checks import (check_backend_name, check_flag, check_input, check_packed_states, check_state_dims,
                             check_states, check_weights_match, checked_parameter, state_names, state_tuple)
from .backends.base import LayerWeights
from .cells import CellSpec
from .dropconnect import check_dropconnect, drop_recurrent_weight
from .layer import join_states, split_states
from .torchscript import refuse_script
from .zoneout import check_zoneout, draw_mask

__all__ = ["FusedRNNBase", "check_num_heads", "init_cell_parameters", "init_forget_bias", "init_haste_biases"]

#: the range a diagonal (element-wise) recurrent weight is drawn from: haste's IndRNN initialisation
#: (lmnt-com/haste#7); |u| < 1 keeps h bounded over long sequences with either activation
DIAGONAL_RECURRENT_INIT = 0.5


def init_cell_parameters(cell: CellSpec, named_parameters) -> None:
    """What a cell's record asks of its parameters after torch.nn's initialisation (``U(-1/sqrt(H), 1/sqrt(H))``
    for each, in registration order): a diagonal recurrent weight ``weight_hh*`` redrawn from ``U(-0.5, 0.5)``,
    and each extra weight set to its record's value (layer-norm gains to one, shifts to zero).  Nothing for
    the built-in cells, whose draws stay torch.nn's.  ``named_parameters``: (name, parameter) pairs of a
    stack (``weight_hh_l0``) or a cell (``weight_hh``)."""
    record = cell.record
    extras = {e.name: e.init for e in record.extra_weights}
    if record.recurrent != "diagonal" and not extras:
        return
    with torch.no_grad():
        for name, param in named_parameters:
            stem = _stem(name)
            if stem == "weight_hh" and record.recurrent == "diagonal":
                param.uniform_(-DIAGONAL_RECURRENT_INIT, DIAGONAL_RECURRENT_INIT)
            elif stem in extras:
                param.fill_(extras[stem])


def init_haste_biases(cell: CellSpec, named_parameters, forget_bias: Optional[float] = None) -> None:
    """haste's bias initialisation for its layer-normalised cells: zeros, then :func:`init_forget_bias`."""
    named_parameters = list(named_parameters)
    with torch.no_grad():
        for name, param in named_parameters:
            if _stem(name) in ("bias_ih", "bias_hh"):
                param.zero_()
    init_forget_bias(cell, named_parameters, forget_bias)


def init_forget_bias(cell: CellSpec, named_parameters, forget_bias: Optional[float]) -> None:
    """With ``forget_bias`` (a number), the forget gate's block of ``bias_ih`` set to it and ``bias_hh``'s to
    zero, so that their sum, all the step reads, is ``forget_bias`` (haste's ``forget_bias``, Jozefowicz et
    al.'s 1.0); the other blocks and parameters keep their values.  Nothing with None or without biases."""
    if forget_bias is None:
        return
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
        raise TypeError(f"forget_bias should be a number or None, got {type(forget_bias).__name__}")
    f = cell.record.gates.index("f")
    with torch.no_grad():
        for name, param in named_parameters:
            stem = _stem(name)
            if stem in ("bias_ih", "bias_hh"):
                hidden = param.shape[0] // cell.gates
                param[f * hidden:(f + 1) * hidden] = forget_bias if stem == "bias_ih" else 0.0


def check_num_heads(cell: CellSpec, num_heads, hidden_size: int) -> None:
    """``num_heads``: an int dividing hidden_size, other than 1 only for a cell with a block-diagonal recurrent
    weight (sLSTM's heads); ValueError (TypeError for a non-int) naming it."""
    if not isinstance(num_heads, int) or isinstance(num_heads, bool):
        raise TypeError(f"num_heads should be of type int, got: {type(num_heads).__name__}")
    if num_heads != 1 and cell.record.recurrent != "block_diagonal":
        raise ValueError(f"num_heads exists only for cells with heads (sLSTM), not {cell}")
    if num_heads <= 0 or hidden_size % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of hidden_size, got num_heads={num_heads} for "
                         f"hidden_size={hidden_size}")


def _stem(name: str) -> str:
    """A parameter's name without its ``_l{k}[_reverse]`` suffix (``ln_weight_ih_l1_reverse`` -> ``ln_weight_ih``)."""
    head, sep, tail = name.rpartition("_l")
    return head if sep and tail.split("_")[0].isdigit() else name

_PLAIN = (torch.Tensor, nn.Parameter)
_MISSING = object()

#: a layer-direction's parameter names, ``{prefix}_l{layer}[_reverse]``, in LayerWeights' order
_WEIGHT_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch", "weight_hr")


class FusedRNNBase(nn.RNNBase):
    """What ``LSTM``, ``GRU``, ``RNN`` and ``Recurrent`` share: a ``torch.nn.RNNBase`` with fused arithmetic.

    Not meant to be built directly; ``cell`` chooses the family and variant.
    Each drop-in subclass lists its torch.nn twin second among its bases (``class LSTM(FusedRNNBase,
    nn.LSTM)``), so the MRO is ``[LSTM, FusedRNNBase, nn.LSTM, nn.RNNBase, nn.Module]``: what is
    defined here wins over torch's (``forward`` above all), and torch's family-specific helpers
    (``nn.LSTM.check_forward_args`` taking ``(h, c)``) win over ``nn.RNNBase``'s.  ``Recurrent``,
    for any family of the cell table, has no twin: ``[Recurrent, FusedRNNBase, nn.RNNBase, nn.Module]``.
    """

    def __init__(
        self,
        cell: CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        peephole: bool = False,
        backend: str = "auto",
        zoneout: float = 0.0,
        dropconnect: float = 0.0,
        num_heads: int = 1,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        # nn.Module's __init__ only: the next one in the MRO is torch's (nn.LSTM.__init__), which
        # would register and draw the parameters its own way and build cuDNN's flat weights
        nn.Module.__init__(self)
        self.mode = cell.record.torch_mode  # torch.nn.RNNBase.mode, kept as the attribute torch has
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        num_directions = 2 if bidirectional else 1

        # The checks, their order, messages and exception types are torch.nn.RNNBase's.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        check_flag("bias", bias)
        check_flag("batch_first", batch_first)
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if not isinstance(num_layers, int):
            # torch.nn gets here with a TypeError from `num_layers <= 0` that does not name it
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        # which extras a cell takes is the cell table's to say (CellRecord.optional_weights)
        if proj_size > 0 and "projection" not in cell.record.optional_weights:
            raise ValueError(f"proj_size argument is only supported for cells with a projection (LSTM), not {cell}")
        check_flag("peephole", peephole)
        if peephole and "peephole" not in cell.record.optional_weights:
            raise ValueError(f"peephole connections exist only for cells that have them (LSTM), not {cell}")
        check_backend_name(backend)
        check_num_heads(cell, num_heads, hidden_size)
        # haste's zoneout of h (fusedrnn.zoneout): a rate, checked here and at each call (it may be reassigned)
        self.zoneout = check_zoneout(zoneout)
        # haste's DropConnect of weight_hh (fusedrnn.dropconnect), likewise
        self.dropconnect = check_dropconnect(dropconnect)
        self.peephole = peephole
        self.backend = backend
        self.num_heads = num_heads
        self._cell_spec = cell

        gate_size = cell.gates * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        # every parameter's shape, to name the parameter when one is replaced by a wrong-shaped one
        self._param_shapes: Dict[str, Tuple[int, ...]] = {}
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                shapes = [("weight_ih_l{}{}", (gate_size, layer_input_size)),
                          ("weight_hh_l{}{}", cell.recurrent_shape(hidden_size, real_hidden_size, num_heads))]
                if bias:
                    shapes += [("bias_ih_l{}{}", (gate_size,)), ("bias_hh_l{}{}", (gate_size,))]
                if peephole:
                    shapes += [("weight_ch_l{}{}", (cell.peephole_blocks * hidden_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr_l{}{}", (proj_size, hidden_size))]
                # a cell's extra weights (layer-norm gains), each a parameter of its own, after torch.nn's
                shapes += [(extra.name + "_l{}{}", (extra.blocks * hidden_size,))
                           for extra in cell.record.extra_weights]
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for pattern, shape in shapes:
                    name = pattern.format(layer, suffix)
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                    self._param_shapes[name] = shape
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # -- torch.nn.RNNBase's flat-weight cache ---------------------------------
    #
    # torch keeps ``self._flat_weights`` (the parameters in cuDNN's order, for _VF's ops) as a
    # cached list, plus weak references to detect replaced parameters, and refreshes them in
    # __init__, __setattr__, _apply, __setstate__, __getstate__ and _replicate_for_data_parallel.
    # Here ``_flat_weights`` is a property read at each access, so it can never go stale, and
    # each of those methods is nn.Module's (torch's versions assign the property and read
    # ``_flat_weight_refs``, which these modules do not have).  Everything else of
    # nn.RNNBase / nn.LSTM / nn.GRU / nn.RNN is inherited unchanged: check_input,
    # check_forward_args, get_expected_hidden_size, get_expected_cell_size, check_hidden_size,
    # permute_hidden, all_weights and reset_parameters work on this layout as they are.

    @property
    def _flat_weights(self) -> List[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    __setattr__ = nn.Module.__setattr__
    _apply = nn.Module._apply
    # a pickle names its class, so only fusedrnn pickles come here: torch's fix-ups are for
    # nn.RNNBase pickles older than PyTorch 1.8
    __getstate__ = nn.Module.__getstate__
    __setstate__ = nn.Module.__setstate__
    # the replica reads its parameters by name, like the original; nothing to copy
    _replicate_for_data_parallel = nn.Module._replicate_for_data_parallel
    # torch.jit.script calls it on every submodule first: one clear error naming fusedrnn.revert
    __prepare_scriptable__ = refuse_script

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (the same draws as the torch.nn twin), then what the cell's record asks
        (:func:`init_cell_parameters`)."""
        super().reset_parameters()
        init_cell_parameters(self.cell, self.named_parameters())

    def _init_flat_weights(self) -> None:
        """A no-op: there is no cached list to rebuild."""

    def _weights_have_changed(self) -> bool:
        """Always False: nothing is cached, so no parameter can have changed behind a cache."""
        return False

    def flatten_parameters(self) -> None:
        """A no-op: the parameters are read as they are at every call (cuDNN's flat buffer is not used)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + self._extras_repr()

    def _extras_repr(self) -> str:
        s = ""
        if self.peephole:
            s += ", peephole=True"
        if getattr(self, "num_heads", 1) != 1:
            s += f", num_heads={self.num_heads}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.zoneout:
            s += f", zoneout={self.zoneout!r}"
        if self.__dict__.get("dropconnect", 0.0):
            s += f", dropconnect={self.dropconnect!r}"
        return s

    # -- forward -------------------------------------------------------------

    @property
    def cell(self) -> CellSpec:
        """The cell family and variant every layer-direction runs."""
        return self._cell_spec

    def _direction_names(self, layer: int, direction: int) -> List[Optional[str]]:
        """One layer-direction's parameter names in LayerWeights' order, None where it has no such weight."""
        suffix = "_reverse" if direction == 1 else ""
        present = (True, True, self.bias, self.bias, self.peephole, self.proj_size > 0)
        return [f"{prefix}_l{layer}{suffix}" if there else None for prefix, there in zip(_WEIGHT_PREFIXES, present)]

    def _extra_names(self, layer: int, direction: int) -> List[str]:
        """One layer-direction's extra parameters (the record's ``extra_weights``: layer-norm gains), in order."""
        suffix = "_reverse" if direction == 1 else ""
        return [f"{extra.name}_l{layer}{suffix}" for extra in self.cell.record.extra_weights]

    def _direction_weights(self, layer: int, direction: int, dtype: Optional[torch.dtype]) -> LayerWeights:
        """One layer-direction's parameters, read now (so in-place edits and functional_call take effect); a
        cell's extra parameters concatenated into ``w_extra`` (one differentiable op: each gets its gradient)."""
        weights = [None if name is None else cast(checked_parameter(self, name), dtype)
                   for name in self._direction_names(layer, direction)]
        extras = [cast(checked_parameter(self, name), dtype) for name in self._extra_names(layer, direction)]
        return LayerWeights(*weights, torch.cat(extras) if extras else None)

    def _named_direction_weights(self, layer: int, direction: int, weights: LayerWeights,
                                 dtype: Optional[torch.dtype]):
        """(name, tensor) of each weight a layer-direction's call reads (cast as the call casts them), its extra
        parameters by their own names rather than as ``w_extra`` (for the checks that name the parameter)."""
        named = list(zip(self._direction_names(layer, direction), weights))
        named += [(name, cast(checked_parameter(self, name), dtype)) for name in self._extra_names(layer, direction)]
        return named

    def _state_sizes(self, batch: int) -> List[Tuple[int, int, int]]:
        """Expected shape of each initial state tensor (h, and c for LSTM; c, n, m for sLSTM)."""
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = [(self.num_layers * num_directions, batch, real_hidden_size)]
        sizes += [(self.num_layers * num_directions, batch, self.hidden_size)] * self.cell.cell_state_blocks
        return sizes

    def forward(self, input, hx=None):
        """Run the stack over ``input`` (tensor or PackedSequence); returns ``(output, h_n)`` /
        ``(output, (h_n, c_n))`` exactly as the torch.nn twin (a cell with more states: all of them,
        ``(output, (h_n, c_n, n_n, m_n))`` for sLSTM)."""
        direct = self._direct_forward(input, hx)
        if direct is not None:
            return direct
        cell = self.cell
        name = type(self).__name__
        is_packed = isinstance(input, PackedSequence)
        if is_packed:
            check_not_exporting_packed()  # batch_sizes are data torch.export cannot trace (_export_limits.py)
            x, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            functional.check_batch_sizes(batch_sizes, x.shape[0])
            batch = int(batch_sizes[0])
            states = state_tuple(self, hx)
            if states is not None:
                check_packed_states(states, sorted_indices, batch)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            # the layers run time-major [T, B, I]; unbatched input is one sequence of batch 1
            if not is_batched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
            batch = x.size(1)
            states = state_tuple(self, hx)
            if states is not None:
                check_state_dims(states, is_batched, state_names(cell))
                if not is_batched:
                    states = tuple(s.unsqueeze(1) for s in states)

        if batch_sizes is None and x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch.nn's check
        cast_to = autocast_dtype(x.device)
        check_input(self, x, batch_sizes, cast_to)
        if states is not None:
            check_states(self, states, x, batch, cast_to)
            if sorted_indices is not None:
                # each batch entry's state goes with its sequence, in the packed (sorted) order
                states = self._permute_states(states, sorted_indices)
        x = cast(x, cast_to)
        if states is not None:
            states = tuple(cast(s, cast_to) for s in states)

        with autocast_off(x.device, cast_to):
            # the layers take h and one cell state (sLSTM's c, n, m concatenated): fusedrnn.layer.join_states
            output, h_n, c_n = self._run_layers(cell, x, None if states is None else join_states(states),
                                                batch_sizes, cast_to)

        finals = split_states(cell, h_n, c_n)
        if unsorted_indices is not None:
            finals = self._permute_states(finals, unsorted_indices)
        if is_packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        elif not is_batched:
            output = output.squeeze(1)
            finals = tuple(s.squeeze(1) for s in finals)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (finals if cell.has_cell_state else finals[0])

    def _direct_forward(self, input, hx):
        """:meth:`forward` of a batched padded input, each layer-direction one op call on its plain tensors
        (:func:`fusedrnn.functional.run_step` for one time step, :func:`fusedrnn.functional.run_direct` for
        more), or None where the call takes the general path.

        A decoder built on a stack calls it once per token, or on a few steps at a time: there the general
        path's Python (torch.nn's checks, the weights' checks, per layer-direction) cost more than torch.nn's
        whole call.  This path takes only the common call, a plain tensor, states (or none) of exactly the
        stack's shape, no projection, no extra weights, no dropout or DropConnect in training, no zoneout,
        the parameters as registered; the ops check the rest, and where they refuse a call, the general path
        runs it (and raises torch.nn's errors).
        """
        cell = self.cell
        if (type(input) not in _PLAIN or input.dim() != 3 or input.is_meta or not input.is_floating_point()
                or self.proj_size > 0 or cell.record.extra_weights
                or (self.training and (self.dropout > 0 or self.__dict__.get("dropconnect", 0.0) != 0.0))
                or self.__dict__.get("zoneout", 0.0) != 0.0
                or cell.cell_state_blocks > 1):  # (more states than (h, c): sLSTM's step runs as a sequence)
            return None  # (zoneout, in training or not, and an invalid rate: the general path's)
        x = input.transpose(0, 1) if self.batch_first else input
        steps, batch, hidden, directions = x.size(0), x.size(1), self.hidden_size, 2 if self.bidirectional else 1
        if steps == 0 or batch == 0 or hidden == 0 or x.size(2) == 0 or x.size(2) != self.input_size:
            return None
        shape = (self.num_layers * directions, batch, hidden)
        if hx is None:
            states = (x.new_zeros(shape),) * (2 if cell.has_cell_state else 1)
        else:
            states = tuple(hx) if cell.has_cell_state and isinstance(hx, (tuple, list)) else (hx,)
            if len(states) != (2 if cell.has_cell_state else 1) or any(
                    type(s) not in _PLAIN or s.shape != shape for s in states):
                return None
        params = self._parameters
        layer_input, h_n, c_n = (x[0] if steps == 1 else x), [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                names = self._direction_names(layer, direction)[:5]
                weights = [None if name is None else params.get(name, _MISSING) for name in names]
                if any(name is not None and type(w) not in _PLAIN for w, name in zip(weights, names)):
                    return None  # a parametrized, subclassed or missing weight (one set to None)
                h0, c0 = states[0][index], states[1][index] if cell.has_cell_state else None
                if steps == 1:
                    result = functional.run_step(cell, layer_input, h0, c0, LayerWeights(*weights), self.backend)
                    result = None if result is None else functional.LayerOutput(result[0], result[0], result[1])
                else:
                    result = functional.run_direct(cell, layer_input, h0, c0, LayerWeights(*weights), direction == 1,
                                                   self.backend)
                if result is None:
                    return None
                outputs.append(result.out)
                h_n.append(result.h_n)
                c_n.append(result.c_n)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if steps == 1:
            output = layer_input.unsqueeze(0)
        elif directions == 1 and layer_input.requires_grad:
            # as in _run_layers: the caller's output is not the tensor the backward reads
            output = layer_input.clone()
        else:
            output = layer_input
        if self.batch_first:
            output = output.transpose(0, 1)
        # torch.stack copies: the states share no memory with the output, as in torch.nn
        if cell.has_cell_state:
            return output, (torch.stack(h_n), torch.stack(c_n))
        return output, torch.stack(h_n)

    def _run_step(self, cell: CellSpec, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                  weights: LayerWeights) -> Optional[functional.LayerOutput]:
        """A layer-direction over one time step (``x`` [1, B, I], either direction: one step reads the same
        way both ways) through the backend's single-step op (:func:`fusedrnn.functional.run_step`), or None
        where it runs as a sequence of one step: a stack called once per token, as a decoder calls it."""
        if weights.w_hh.dim() != 2:  # a diagonal recurrence (IndRNN): no step op reads its [H] weight
            return None
        batch, hidden = x.size(1), weights.w_hh.size(0) // cell.gates
        if batch == 0 or hidden == 0 or x.size(2) == 0 or x.is_meta or not x.is_floating_point():
            return None
        # h's width from the module (IndRNN's recurrent weight is a vector, with no column count to read)
        h0 = x.new_zeros((batch, self.proj_size if self.proj_size > 0 else hidden)) if h0 is None else h0
        if cell.has_cell_state and c0 is None:
            c0 = x.new_zeros((batch, cell.cell_state_blocks * hidden))
        result = functional.run_step(cell, x[0], h0, c0, weights, self.backend)
        if result is None:
            return None
        h_n, c_n = result
        # the output is h_n's values, not h_n itself: torch.nn's outputs share no memory with its states
        return functional.LayerOutput(h_n.unsqueeze(0), h_n.clone(), c_n)

    def _permute_states(self, states: Tuple[Tensor, ...], permutation: Tensor) -> Tuple[Tensor, ...]:
        """The states' batch entries reordered through ``self.permute_hidden``, as torch.nn's forward
        does it, so that a subclass overriding ``permute_hidden`` is honoured."""
        permuted = self.permute_hidden(states if self.cell.has_cell_state else states[0], permutation)
        return tuple(permuted) if self.cell.has_cell_state else (permuted,)

    def _run_layers(self, cell: CellSpec, x: Tensor, states, batch_sizes, cast_to):
        """The stack: one op call per layer-direction, dropout between layers (training only); in training, per
        layer-direction (forward direction first), after the layer's dropout: DropConnect's mask of weight_hh,
        then zoneout's mask."""
        num_directions = 2 if self.bidirectional else 1
        # getattr: a module unpickled from before zoneout or dropconnect existed has no attribute
        zoneout = check_zoneout(getattr(self, "zoneout", 0.0))
        dropconnect = check_dropconnect(getattr(self, "dropconnect", 0.0))
        h_finals, c_finals = [], []
        layer_input = x
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                # on the previous layer's output (torch: after all but the last layer); packed rows as they are
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                weights = self._direction_weights(layer, direction, cast_to)
                if dropconnect and self.training:
                    weights = weights._replace(w_hh=drop_recurrent_weight(weights.w_hh, dropconnect, True))
                h0 = None if states is None else states[0][index]
                c0 = None if states is None or not cell.has_cell_state else states[1][index]
                result = mask = None
                if zoneout and self.training:
                    # the output's layout: [T, B, H_out], or packed rows [N, H_out]
                    hout = self.proj_size if self.proj_size > 0 else self.hidden_size
                    mask = draw_mask(zoneout, (*layer_input.shape[:-1], hout), layer_input)
                if batch_sizes is None and layer_input.size(0) == 1 and not zoneout:
                    # the step op checks the weights' dtypes and devices itself, and refuses what is wrong
                    result = self._run_step(cell, layer_input, h0, c0, weights)
                if result is None:
                    # functional.layer's checks are made: torch.nn's in forward, the weights' here
                    check_weights_match(self, self._named_direction_weights(layer, direction, weights, cast_to), x)
                    result = functional.run_checked(cell, layer_input, h0, c0, weights, batch_sizes, direction == 1,
                                                    self.backend, zoneout, mask)
                outputs.append(result.out)
                h_finals.append(result.h_n)
                c_finals.append(result.c_n)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
        if num_directions == 1 and layer_input.requires_grad:
            # the op saved this very tensor for its backward; the caller gets a copy, so that
            # in-place edits of the output (out.relu_(), masked_fill_), which torch.nn allows,
            # neither raise nor change what the backward reads
            layer_input = layer_input.clone()
        h_n = torch.stack(h_finals)
        c_n = torch.stack(c_finals) if cell.has_cell_state else None
        return layer_input, h_n, c_n
