"""Drop-in replacements for ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN``.

Same constructor arguments (positional order and defaults), parameter names,
shapes, registration order and initialisation (the same RNG draws in the
same order), same ``state_dict``, forward inputs and outputs, warnings and
exceptions as their torch.nn twins; the arithmetic runs through
:func:`fusedrnn.functional.layer`, one op call per layer-direction.

Each class subclasses its torch.nn twin (``LSTM`` is a ``torch.nn.LSTM`` and a
``torch.nn.RNNBase``, and so on), so that client code branching on
``isinstance(m, nn.LSTM)`` / ``nn.GRU`` / ``nn.RNNBase`` treats them as the
layers they replace.  torch's ``__init__`` is not run (it would build cuDNN's
flat weights); our construction registers the same parameters with the same
RNG draws.  torch.nn's helpers are inherited where they work on this layout
(``check_forward_args``, ``check_input``, ``get_expected_hidden_size``,
``get_expected_cell_size``, ``check_hidden_size``, ``permute_hidden``,
``all_weights``, ``reset_parameters``) and overridden where they maintain
torch's cached flat-weight list, which these classes do not keep
(``_flat_weights`` is computed at each access): see "torch.nn.RNNBase's
flat-weight cache" below.  torch._dynamo refuses to trace instances of torch's
RNN classes unless ``torch._dynamo.config.allow_rnn`` is set; for these classes
alone :mod:`fusedrnn._dynamo_compat` sets it while Dynamo wraps the module, so
``torch.compile(fullgraph=True)`` works on a model holding them.

Extras beyond torch.nn, keyword-only after torch's arguments:

* ``backend="auto"`` on every class (:mod:`fusedrnn.backends`);
* ``LSTM(..., peephole=True)``: diagonal peepholes, one parameter
  ``weight_ch_l{k}[_reverse]`` of shape ``[3*hidden_size]`` (blocks i, f, o)
  per layer-direction, registered right after ``bias_hh_l{k}[_reverse]``;
* ``GRU(..., reset_after=False)``: the original GRU of Cho et al.;
* ``RNN`` with ``nonlinearity`` ``'tanh'`` or ``'relu'`` (as torch.nn).
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _dynamo_compat, backends, functional
from .backends.base import LayerWeights
from .cells import CellSpec

__all__ = ["FusedRNNBase", "LSTM", "GRU", "RNN"]

# Marks an argument the caller did not pass (torch rejects ``proj_size`` on
# GRU/RNN whenever it is given, even as 0).
_NOT_GIVEN = object()


# ----------------------------------------------------------------------------
# Helpers shared with fusedrnn.cell_modules
# ----------------------------------------------------------------------------


def check_backend_name(backend) -> None:
    """Reject an unknown backend name at construction (availability is checked per call)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend should be of type str, got: {type(backend).__name__}")
    if backend != "auto" and backend not in backends.names():
        raise ValueError(f"unknown fusedrnn backend {backend!r}; expected 'auto' or one of {backends.names()}")


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast asks for on ``device``, or None outside autocast.

    The custom ops are not on autocast's lists, so the modules cast their
    inputs, states and weights themselves, for every family and layout, as
    torch.nn's RNNs are cast on CUDA.  (On the CPU torch.nn casts only some:
    its GRU, its cells and its LSTM over a PackedSequence stay float32 there,
    an accident of which ATen ops are on the CPU autocast list.)
    """
    # autocast exists for some device types only (not meta): asking about others raises
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_off(device: torch.device, cast_to: Optional[torch.dtype]):
    """Autocast disabled while the ops run, when it was on: the inputs are already cast, and the
    backends choose their own accumulation dtype (autocast would otherwise recast the matrix
    products inside a backend's kernels)."""
    return torch.autocast(device.type, enabled=False) if cast_to is not None else contextlib.nullcontext()


def check_state_tensor(name: str, state: Tensor, x: Tensor, what: str, check_dtype: bool = True) -> None:
    """Device (and dtype) of an initial state against the input's: RuntimeError, as torch raises.

    Under autocast the dtype is not checked: the states are cast like the input.
    """
    if state.device != x.device:
        raise RuntimeError(
            f"{what}: input and {name} are not on the same device: input on {x.device}, {name} on {state.device}"
        )
    if check_dtype and state.dtype != x.dtype:
        raise RuntimeError(
            f"{what}: {name} dtype ({state.dtype}) does not match input dtype ({x.dtype}); "
            f"convert it with {name}.to({x.dtype})"
        )


def checked_parameter(module: nn.Module, name: str) -> Optional[Tensor]:
    """``module.<name>``, after checking it still has the shape the module was built with.

    A parameter replaced by one of another shape (``m.weight_ih_l0 = nn.Parameter(...)``) is
    reported under its own name (RuntimeError), not as a mismatch of the input it meets first.
    """
    value = getattr(module, name)
    expected = getattr(module, "_param_shapes", {}).get(name)
    if value is not None and expected is not None and tuple(value.shape) != tuple(expected):
        raise RuntimeError(
            f"{type(module).__name__}: parameter {name} has shape {list(value.shape)}, but this module "
            f"needs {list(expected)} ({module.extra_repr()})"
        )
    return value


def cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


# ----------------------------------------------------------------------------
# The stacked, optionally bidirectional module
# ----------------------------------------------------------------------------


class FusedRNNBase(nn.RNNBase):
    """What ``LSTM``, ``GRU`` and ``RNN`` share: a ``torch.nn.RNNBase`` with fused arithmetic.

    Not meant to be built directly; ``cell`` chooses the family and variant.
    Each subclass lists its torch.nn twin second among its bases (``class LSTM(FusedRNNBase,
    nn.LSTM)``), so the MRO is ``[LSTM, FusedRNNBase, nn.LSTM, nn.RNNBase, nn.Module]``: what is
    defined here wins over torch's (``forward`` above all), and torch's family-specific helpers
    (``nn.LSTM.check_forward_args`` taking ``(h, c)``) win over ``nn.RNNBase``'s.
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
        check_flag("peephole", peephole)
        if peephole and cell.family != "lstm":
            raise ValueError("peephole connections exist only for LSTM")
        check_backend_name(backend)
        self.peephole = peephole
        self.backend = backend
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
                shapes = [("weight_ih_l{}{}", (gate_size, layer_input_size)), ("weight_hh_l{}{}", (gate_size, real_hidden_size))]
                if bias:
                    shapes += [("bias_ih_l{}{}", (gate_size,)), ("bias_hh_l{}{}", (gate_size,))]
                if peephole:
                    shapes += [("weight_ch_l{}{}", (cell.peephole_blocks * hidden_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr_l{}{}", (proj_size, hidden_size))]
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
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # -- forward -------------------------------------------------------------

    @property
    def cell(self) -> CellSpec:
        """The cell family and variant every layer-direction runs."""
        return self._cell_spec

    def _direction_weights(self, layer: int, direction: int, dtype: Optional[torch.dtype]) -> LayerWeights:
        """One layer-direction's parameters, read now (so in-place edits and functional_call take effect)."""
        suffix = "_reverse" if direction == 1 else ""

        def param(prefix: str, present: bool) -> Optional[Tensor]:
            if not present:
                return None
            name = f"{prefix}_l{layer}{suffix}"
            return cast(checked_parameter(self, name), dtype)

        return LayerWeights(
            param("weight_ih", True),
            param("weight_hh", True),
            param("bias_ih", self.bias),
            param("bias_hh", self.bias),
            param("weight_ch", self.peephole),
            param("weight_hr", self.proj_size > 0),
        )

    def _state_sizes(self, batch: int) -> List[Tuple[int, int, int]]:
        """Expected shape of each initial state tensor (h, and c for LSTM)."""
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = [(self.num_layers * num_directions, batch, real_hidden_size)]
        if self.cell.has_cell_state:
            sizes.append((self.num_layers * num_directions, batch, self.hidden_size))
        return sizes

    def _state_tuple(self, hx) -> Optional[Tuple[Tensor, ...]]:
        """``hx`` as a tuple of state tensors: ``(h, c)`` for LSTM, ``(h,)`` otherwise."""
        # The exception types are those torch.nn's forward ends up raising for each mistake (an
        # IndexError from hx[1], torch's own RuntimeError, an AttributeError from hx.dim()), so code
        # that catches them behaves the same; the messages say what hx must be.
        if hx is None:
            return None
        name = type(self).__name__
        if self.cell.has_cell_state:
            if isinstance(hx, (tuple, list)) and len(hx) == 2:
                return tuple(hx)
            want = f"{name}: hx must be a tuple (h_0, c_0) of two tensors"
            if isinstance(hx, (tuple, list)) and len(hx) > 2:
                raise RuntimeError(f"lstm expects two hidden states; {want}, got {len(hx)}")
            if isinstance(hx, Tensor) and hx.dim() > 0 and hx.shape[0] >= 2:
                # torch.nn reads hx[0], hx[1] of such a tensor, then its _VF op refuses a tensor for a tuple
                raise TypeError(f"{want}, got one tensor of shape {list(hx.shape)}")
            if isinstance(hx, (tuple, list, Tensor)):
                got = f"a {type(hx).__name__} of {len(hx)}" if not isinstance(hx, Tensor) else "one tensor"
                raise IndexError(f"{want}, got {got}")
            raise TypeError(f"{want}, got {type(hx).__name__}")
        if not isinstance(hx, Tensor):
            raise AttributeError(f"{name}: hx must be a tensor (h_0), got {type(hx).__name__}")
        return (hx,)

    @staticmethod
    def _check_packed_states(states: Tuple[Tensor, ...], sorted_indices: Optional[Tensor], batch: int) -> None:
        """Initial states given with a PackedSequence: 3-D (IndexError, as torch.nn's index_select over
        dim 1 raises), and a permutation of the whole batch to sort them by (RuntimeError, as torch)."""
        for state in states:
            if state.dim() != 3:
                raise IndexError(f"For packed input, hx must be 3-D (num_layers * num_directions, batch, "
                                 f"hidden_size), got a {state.dim()}-D tensor")
        if sorted_indices is not None and sorted_indices.numel() != batch:
            raise RuntimeError(f"PackedSequence: sorted_indices has {sorted_indices.numel()} entries but the "
                               f"batch has {batch} sequences (batch_sizes[0]); expected hidden size to match")

    def _check_state_dims(self, states: Tuple[Tensor, ...], is_batched: bool) -> None:
        """torch.nn's check that hx has the input's batchedness (RuntimeError, torch's messages)."""
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if all(s.dim() == want for s in states):
            return
        if len(states) == 2:
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got "
                f"({states[0].dim()}-D, {states[1].dim()}-D) tensors"
            )
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor")

    def _check_input(self, x: Tensor, batch_sizes: Optional[Tensor], cast_to: Optional[torch.dtype]) -> None:
        """torch.nn.RNNBase.check_input: dtype (ValueError), rank and feature size (RuntimeError)."""
        weight_dtype = self.weight_ih_l0.dtype
        if x.dtype != weight_dtype and cast_to is None:
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({x.dtype})"
            )
        for name, weight in zip(self._flat_weights_names, self._flat_weights):
            if not isinstance(weight, Tensor):  # torch.nn's type for this (its _VF ops take tensors only)
                raise TypeError(f"{type(self).__name__}: parameter {name} is {type(weight).__name__}, "
                                "expected a tensor")
            if weight.device != x.device:  # torch.nn's check and message (_VF.lstm and co.)
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor at "
                    f"{x.device} and parameter tensor at {weight.device}"
                )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if x.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {x.dim()}")
        if self.input_size != x.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.size(-1)}"
            )

    def _check_states(self, states: Tuple[Tensor, ...], x: Tensor, batch: int, cast_to) -> None:
        """Shapes as torch.nn.RNNBase.check_hidden_size; then dtype and device (RuntimeError, as torch)."""
        labels = ["hidden[0]", "hidden[1]"] if len(states) == 2 else ["hidden"]
        for state, expected, label in zip(states, self._state_sizes(batch), labels):
            if state.size() != expected:
                raise RuntimeError(f"Expected {label} size {expected}, got {list(state.size())}")
        for state, name in zip(states, ("hx", "cx")):
            check_state_tensor(name, state, x, type(self).__name__, check_dtype=cast_to is None)

    def forward(self, input, hx=None):
        """Run the stack over ``input`` (tensor or PackedSequence); returns ``(output, h_n)`` /
        ``(output, (h_n, c_n))`` exactly as the torch.nn twin."""
        cell = self.cell
        name = type(self).__name__
        is_packed = isinstance(input, PackedSequence)
        if is_packed:
            x, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            functional.check_batch_sizes(batch_sizes, x.shape[0])
            batch = int(batch_sizes[0])
            states = self._state_tuple(hx)
            if states is not None:
                self._check_packed_states(states, sorted_indices, batch)
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
            states = self._state_tuple(hx)
            if states is not None:
                self._check_state_dims(states, is_batched)
                if not is_batched:
                    states = tuple(s.unsqueeze(1) for s in states)

        if batch_sizes is None and x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch.nn's check
        cast_to = autocast_dtype(x.device)
        self._check_input(x, batch_sizes, cast_to)
        if states is not None:
            self._check_states(states, x, batch, cast_to)
            if sorted_indices is not None:
                # each batch entry's state goes with its sequence, in the packed (sorted) order
                states = self._permute_states(states, sorted_indices)
        x = cast(x, cast_to)
        if states is not None:
            states = tuple(cast(s, cast_to) for s in states)

        with autocast_off(x.device, cast_to):
            output, h_n, c_n = self._run_layers(cell, x, states, batch_sizes, cast_to)

        if unsorted_indices is not None:
            h_n, *rest = self._permute_states((h_n,) if c_n is None else (h_n, c_n), unsorted_indices)
            c_n = rest[0] if rest else None
        if is_packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        elif not is_batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if cell.has_cell_state else h_n)

    def _permute_states(self, states: Tuple[Tensor, ...], permutation: Tensor) -> Tuple[Tensor, ...]:
        """The states' batch entries reordered through ``self.permute_hidden``, as torch.nn's forward
        does it, so that a subclass overriding ``permute_hidden`` is honoured."""
        permuted = self.permute_hidden(states if self.cell.has_cell_state else states[0], permutation)
        return tuple(permuted) if self.cell.has_cell_state else (permuted,)

    def _run_layers(self, cell: CellSpec, x: Tensor, states, batch_sizes, cast_to):
        """The stack: one op call per layer-direction, dropout between layers (training only)."""
        num_directions = 2 if self.bidirectional else 1
        h_finals, c_finals = [], []
        layer_input = x
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                # on the previous layer's output (torch: after all but the last layer); packed rows as they are
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                result = functional.layer(
                    cell,
                    layer_input,
                    None if states is None else states[0][index],
                    None if states is None or not cell.has_cell_state else states[1][index],
                    self._direction_weights(layer, direction, cast_to),
                    batch_sizes,
                    direction == 1,
                    self.backend,
                )
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
    bidirectional=False, proj_size=0, device=None, dtype=None, *, peephole=False, backend="auto")``

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
                 backend: str = "auto") -> None:
        super().__init__(CellSpec("lstm", "lstm"), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, peephole=peephole, backend=backend)


class GRU(FusedRNNBase, nn.GRU):
    """Drop-in for :class:`torch.nn.GRU` (same arguments, parameters, inputs and outputs).

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, reset_after=True, backend="auto")``

    ``reset_after=False`` applies the reset gate to h before the product with ``W_hn``
    (the original GRU); the parameters are the same as torch.nn.GRU's.
    """ + _GRU_CONVENTION

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, backend: str = "auto",
                 proj_size=_NOT_GIVEN) -> None:
        if proj_size is not _NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        check_flag("reset_after", reset_after)
        self.reset_after = reset_after
        mode = "reset_after" if reset_after else "reset_before"
        super().__init__(CellSpec("gru", mode), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend)

    def _extras_repr(self) -> str:
        return (", reset_after=False" if not self.reset_after else "") + super()._extras_repr()


class RNN(FusedRNNBase, nn.RNN):
    """Drop-in for :class:`torch.nn.RNN` (same arguments, parameters, inputs and outputs).

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto")``

    ``nonlinearity`` is ``'tanh'`` or ``'relu'``; like torch.nn.RNN it is the fourth positional
    argument, and it is fixed at construction (``mode``).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, backend: str = "auto",
                 proj_size=_NOT_GIVEN) -> None:
        if proj_size is not _NOT_GIVEN:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        functional.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(CellSpec("rnn", nonlinearity), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend)


# Dynamo refuses nn.RNN/GRU/LSTM instances, hence these classes, unless allow_rnn is set:
# set it for these classes only (fusedrnn._dynamo_compat)
_dynamo_compat.install()
