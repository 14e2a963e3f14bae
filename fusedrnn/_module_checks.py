"""The argument checks the recurrent modules share, with torch.nn's exception types and messages.

Construction: the backend's name and the boolean flags.  Each call: the initial states a
:class:`fusedrnn.rnn_base.FusedRNNBase` is given (``hx``: its tuple, rank, shapes, dtype,
device), its input against its parameters, and parameters replaced by ones of another shape.
torch.nn raises a particular exception type for each mistake (often by accident: an
IndexError from ``hx[1]``); code catching those keeps working, and the messages say what
was expected.  :mod:`fusedrnn.cell_modules` uses the helpers at the top.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import backends

__all__ = ["NOT_GIVEN", "attribute", "check_backend_name", "check_flag", "check_state_tensor", "checked_parameter",
           "state_names", "state_tuple", "check_packed_states", "check_state_dims", "check_input", "check_states",
           "check_weights_match"]

# Marks an argument the caller did not pass (torch rejects ``proj_size`` on
# GRU/RNN whenever it is given, even as 0).
NOT_GIVEN = object()


def check_backend_name(backend) -> None:
    """Reject an unknown backend name at construction (availability is checked per call)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend should be of type str, got: {type(backend).__name__}")
    if backend != "auto" and backend not in backends.names():
        raise ValueError(f"unknown fusedrnn backend {backend!r}; expected 'auto' or one of {backends.names()}")


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


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


_MISSING = object()


def attribute(module: nn.Module, name: str, default=_MISSING):
    """``getattr(module, name[, default])``, without the cost of ``nn.Module.__getattr__`` on each call.

    Parameters live in ``module._parameters``, which plain attribute lookup does not see, so each
    ``module.weight_ih`` goes through Python code, and a missing name raises an AttributeError with a
    formatted message before ``hasattr`` returns False (microseconds per name, several names per call
    of a cell step).  A registered parameter first (``torch.func.functional_call`` puts its tensors there
    too): nn.Module keeps a name in one place, and a name it registers as a parameter is neither an
    instance attribute nor a class one (``torch.nn.utils.parametrize`` removes the parameter before it
    installs its property).  Otherwise in getattr's order: the class and the instance (that property, a
    tensor the old ``weight_norm`` sets), buffers, submodules.
    """
    params = module._parameters
    if name in params:
        return params[name]
    if name in module.__dict__ or hasattr(type(module), name):
        return getattr(module, name)
    for registry in (module._buffers, module._modules):
        if name in registry:
            return registry[name]
    if default is _MISSING:
        return getattr(module, name)  # nn.Module's AttributeError and message
    return default


def checked_parameter(module: nn.Module, name: str, default=_MISSING) -> Optional[Tensor]:
    """``module.<name>`` (``default`` if it has none, when given), after checking it still has the shape
    the module was built with.

    A parameter replaced by one of another shape (``m.weight_ih_l0 = nn.Parameter(...)``) is
    reported under its own name (RuntimeError), not as a mismatch of the input it meets first.
    """
    value = attribute(module, name, default)
    expected = module.__dict__.get("_param_shapes", {}).get(name)
    # torch.Size against the tuple first: equal in every call but a faulty one, and cheaper than two tuples
    if (value is not None and expected is not None and value.shape != expected
            and tuple(value.shape) != tuple(expected)):
        raise RuntimeError(
            f"{type(module).__name__}: parameter {name} has shape {list(value.shape)}, but this module "
            f"needs {list(expected)} ({module.extra_repr()})"
        )
    return value


#: how the messages count a cell's states
_COUNTS = {2: "two", 3: "three", 4: "four"}


def state_names(cell) -> Tuple[str, ...]:
    """What the messages call a cell's initial states: ``hx``, ``cx`` (torch.nn's), then sLSTM's ``nx``, ``mx``."""
    return tuple(f"{state}x" for state in cell.record.states)


def state_tuple(rnn: nn.Module, hx) -> Optional[Tuple[Tensor, ...]]:
    """``hx`` as a tuple of state tensors, the record's states in order: ``(h, c)`` for a cell with a cell state
    (LSTM), sLSTM's ``(h, c, n, m)``, ``(h,)`` otherwise."""
    # The exception types are those torch.nn's forward ends up raising for each mistake (an
    # IndexError from hx[1], torch's own RuntimeError, an AttributeError from hx.dim()), so code
    # that catches them behaves the same; the messages say what hx must be.
    if hx is None:
        return None
    name = type(rnn).__name__
    if rnn.cell.has_cell_state:
        count = len(rnn.cell.record.states)
        if isinstance(hx, (tuple, list)) and len(hx) == count:
            return tuple(hx)
        spelled = ", ".join(f"{state}_0" for state in rnn.cell.record.states)
        want = f"{name}: hx must be a tuple ({spelled}) of {_COUNTS.get(count, count)} tensors"
        if isinstance(hx, (tuple, list)) and len(hx) > count:
            raise RuntimeError(f"{rnn.cell.family} expects {_COUNTS.get(count, count)} hidden states; {want}, got {len(hx)}")
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


def check_packed_states(states: Tuple[Tensor, ...], sorted_indices: Optional[Tensor], batch: int) -> None:
    """Initial states given with a PackedSequence: 3-D (IndexError, as torch.nn's index_select over
    dim 1 raises), and a permutation of the whole batch to sort them by (RuntimeError, as torch)."""
    for state in states:
        if state.dim() != 3:
            raise IndexError(f"For packed input, hx must be 3-D (num_layers * num_directions, batch, "
                             f"hidden_size), got a {state.dim()}-D tensor")
    if sorted_indices is not None and sorted_indices.numel() != batch:
        raise RuntimeError(f"PackedSequence: sorted_indices has {sorted_indices.numel()} entries but the "
                           f"batch has {batch} sequences (batch_sizes[0]); expected hidden size to match")


def check_weights_match(module: nn.Module, named_weights, x: Tensor) -> None:
    """Every weight of the (cast) input's dtype and device, the input floating point: what
    :func:`fusedrnn.functional.layer` checks that torch.nn's own checks (the others here) leave out, so that
    a module can call :func:`fusedrnn.functional.run_checked` (RuntimeError / TypeError, as layer raises).
    ``named_weights``: (name, tensor or None) pairs, as the call reads them (a parametrized weight is not a
    registered parameter)."""
    if not x.is_floating_point():
        raise TypeError(f"{type(module).__name__}: input must be a floating-point tensor, got {x.dtype}")
    dtype, device = x.dtype, x.device
    for name, weight in named_weights:
        if weight is None:
            continue
        if weight.dtype != dtype:
            raise RuntimeError(f"{type(module).__name__}: parameter {name} has dtype {weight.dtype} but the input "
                               f"has dtype {x.dtype}; all must match (convert the module with .to({x.dtype}))")
        if weight.device != device:
            raise RuntimeError(f"{type(module).__name__}: parameter {name} is on {weight.device} but the input is "
                               f"on {x.device}; all must be on one device")


def check_state_dims(states: Tuple[Tensor, ...], is_batched: bool, names: Tuple[str, ...] = ("hx", "cx")) -> None:
    """torch.nn's check that hx has the input's batchedness (RuntimeError, torch's messages); ``names``: the
    states' (:func:`state_names`)."""
    want = 3 if is_batched else 2
    kind = "batched 3-D" if is_batched else "unbatched 2-D"
    if all(s.dim() == want for s in states):
        return
    if len(states) > 1:
        names = ", ".join(names[:-1]) + " and " + names[-1]
        raise RuntimeError(
            f"For {kind} input, {names} should also be {want}-D but got "
            f"({', '.join(f'{s.dim()}-D' for s in states)}) tensors"
        )
    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor")


def check_input(rnn: nn.Module, x: Tensor, batch_sizes: Optional[Tensor], cast_to: Optional[torch.dtype]) -> None:
    """torch.nn.RNNBase.check_input for ``rnn``: dtype (ValueError), rank and feature size (RuntimeError)."""
    weight_dtype = rnn.weight_ih_l0.dtype
    if x.dtype != weight_dtype and cast_to is None:
        raise ValueError(
            f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight_dtype}). "
            f"Convert input: input.to({weight_dtype}), or convert model: model.to({x.dtype})"
        )
    for name in rnn._flat_weights_names:
        weight = attribute(rnn, name)
        if not isinstance(weight, Tensor):  # torch.nn's type for this (its _VF ops take tensors only)
            raise TypeError(f"{type(rnn).__name__}: parameter {name} is {type(weight).__name__}, "
                            "expected a tensor")
        if weight.device != x.device:  # torch.nn's check and message (_VF.lstm and co.)
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{x.device} and parameter tensor at {weight.device}"
            )
    expected_input_dim = 2 if batch_sizes is not None else 3
    if x.dim() != expected_input_dim:
        raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {x.dim()}")
    if rnn.input_size != x.size(-1):
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {rnn.input_size}, got {x.size(-1)}"
        )


def check_states(rnn: nn.Module, states: Tuple[Tensor, ...], x: Tensor, batch: int, cast_to) -> None:
    """Shapes as torch.nn.RNNBase.check_hidden_size; then dtype and device (RuntimeError, as torch)."""
    labels = [f"hidden[{i}]" for i in range(len(states))] if len(states) > 1 else ["hidden"]
    for state, expected, label in zip(states, rnn._state_sizes(batch), labels):
        if state.size() != expected:
            raise RuntimeError(f"Expected {label} size {expected}, got {list(state.size())}")
    for state, name in zip(states, state_names(rnn.cell)):
        check_state_tensor(name, state, x, type(rnn).__name__, check_dtype=cast_to is None)
