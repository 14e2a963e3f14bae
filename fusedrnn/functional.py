"""Functional API: one layer-direction over a whole sequence.

``layer(cell, x, h0, c0, weights)`` checks its arguments, picks the backend
(:mod:`fusedrnn.backends`) and calls the cell family's custom op once (an eager
call on plain tensors runs what the op would, its implementation and autograd
formula, without the op's dispatch: :func:`fusedrnn.ops.forward_without_autograd`,
:func:`fusedrnn.ops.forward_with_autograd`).  The modules, which make its checks
themselves, call :func:`run_checked`.  The named wrappers (:func:`lstm_layer`, :func:`gru_layer`, :func:`rnn_layer`) spell
the options out.  Shapes are those of :mod:`fusedrnn.backends.base`.

Example::

    out, h_n, c_n = fusedrnn.functional.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.autograd.forward_ad as forward_ad
from torch._C._functorch import peek_interpreter_stack

from . import backends, zoneout as _zoneout
from .backends.base import LayerWeights
from .backends.compiled import CompiledBackend
from .cells import CellSpec, modes
from .layer import check_like_x, join_states, split_states
from .ops import define, forward_op, forward_with_autograd, forward_without_autograd, op_weights
from .reference import sequence_forward
from .torchscript import check_not_traced

__all__ = ["LayerOutput", "layer", "run_checked", "run_step", "run_direct", "lstm_layer", "gru_layer", "rnn_layer",
           "indrnn_layer", "layer_norm_lstm_layer", "layer_norm_gru_layer", "slstm_layer", "LayerWeights", "CellSpec"]


class LayerOutput(NamedTuple):
    out: torch.Tensor
    h_n: torch.Tensor
    c_n: Optional[torch.Tensor]


def check_batch_sizes(batch_sizes, rows: int) -> None:
    """What a PackedSequence's ``batch_sizes`` must be for ``rows`` packed rows.

    With torch.nn's exception types for each mistake (what its RNN modules end up raising), so the
    modules and the functional API refuse the same things the same way: TypeError when it is not a
    1-D tensor of integers, IndexError when it is empty, RuntimeError for the wrong integer dtype or
    device and for values that do not describe ``rows`` rows sorted by length.  Zeros are allowed at
    the end (steps without rows, as torch.nn allows them).
    """
    if (not isinstance(batch_sizes, torch.Tensor) or batch_sizes.dim() != 1 or batch_sizes.is_floating_point()
            or batch_sizes.is_complex() or batch_sizes.dtype == torch.bool):
        what = (f"shape {tuple(batch_sizes.shape)}, dtype {batch_sizes.dtype}" if isinstance(batch_sizes, torch.Tensor)
                else type(batch_sizes).__name__)
        raise TypeError(f"batch_sizes must be a 1-D int64 CPU tensor (as in PackedSequence), got {what}")
    if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise RuntimeError("batch_sizes must be a 1-D int64 CPU tensor (as in PackedSequence), got "
                           f"dtype {batch_sizes.dtype} on {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise IndexError("batch_sizes is empty: a PackedSequence has at least one step")
    if int(batch_sizes.min()) < 0:
        raise RuntimeError(f"batch_sizes must be >= 0, got a step with {int(batch_sizes.min())} rows")
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError("batch_sizes must be non-increasing (sequences sorted by length, as PackedSequence "
                           f"keeps them), got {batch_sizes.tolist()}")
    if int(batch_sizes.sum()) != rows:
        raise RuntimeError(f"batch_sizes sum to {int(batch_sizes.sum())} but the packed data has {rows} rows")


def _steps_with_rows(batch_sizes: torch.Tensor) -> torch.Tensor:
    """``batch_sizes`` without its trailing zeros (steps without rows change nothing); all of it if
    every step is empty (an empty batch)."""
    steps = int((batch_sizes > 0).sum())
    return batch_sizes[:steps] if 0 < steps < batch_sizes.numel() else batch_sizes


def _check(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes) -> None:
    """Shape, dtype and device checks with messages that name the argument."""
    if batch_sizes is None and x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, input_size] (or packed rows with batch_sizes), got {x.dim()}-D")
    w_ih, w_hh = weights.w_ih, weights.w_hh
    # the recurrent weight's rank is the cell's (a matrix, or IndRNN's vector): the record says which
    diagonal = cell.record.recurrent == "diagonal"
    if (w_ih.dim() != 2 or w_hh.dim() != (1 if diagonal else 2) or w_hh.shape[0] % cell.gates != 0
            or w_ih.shape[0] != w_hh.shape[0]):
        recurrent = f"[{cell.gates}*H]" if diagonal else f"[{cell.gates}*H, H or P]"
        raise ValueError(
            f"weights of a {cell} layer must be w_ih [{cell.gates}*H, I] and w_hh {recurrent}, "
            f"got w_ih {tuple(w_ih.shape)}, w_hh {tuple(w_hh.shape)}"
        )
    hidden = w_hh.shape[0] // cell.gates
    hout = weights.w_proj.shape[0] if weights.w_proj is not None else hidden
    batch = h0.shape[0] if h0.dim() == 2 else -1
    expected = {
        "x": (x, (*x.shape[:-1], w_ih.shape[1])),
        "h0": (h0, (x.shape[1] if batch_sizes is None else batch, hout)),
        "w_hh": (w_hh, cell.recurrent_shape(hidden, hout, _heads(cell, w_hh))),
        "b_ih": (weights.b_ih, (cell.gates * hidden,)),
        "b_hh": (weights.b_hh, (cell.gates * hidden,)),
        "w_peep": (weights.w_peep, (cell.peephole_blocks * hidden,)),
        "w_proj": (weights.w_proj, (hout, hidden)),
    }
    # a cell's extra weights (layer-norm gains) come as one vector, laid out by its record
    if cell.extra_blocks:
        if weights.w_extra is None:
            names = ", ".join(e.name for e in cell.record.extra_weights)
            raise ValueError(f"w_extra is required for a {cell} layer: its {names}, concatenated")
        expected["w_extra"] = (weights.w_extra, (cell.extra_blocks * hidden,))
    elif weights.w_extra is not None:
        raise ValueError(f"w_extra must be None for a {cell} layer: the cell has no extra weights")
    if cell.has_cell_state:
        if c0 is None:
            raise ValueError(f"c0 is required for a {cell} layer")
        # the states after h, concatenated (sLSTM's c, n, m: 3*H wide)
        expected["c0"] = (c0, (h0.shape[0], cell.cell_state_blocks * hidden))
    elif c0 is not None:
        raise ValueError(f"c0 must be None for a {cell.family} layer")
    optional = cell.record.optional_weights  # which extras a cell takes is the cell table's to say
    if ((weights.w_peep is not None and "peephole" not in optional)
            or (weights.w_proj is not None and "projection" not in optional)):
        raise ValueError(f"w_peep and w_proj exist only for LSTM layers, not {cell}")
    for name, (t, shape) in expected.items():
        if t is not None:
            check_like_x(name, t, shape, x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if batch_sizes is not None and int(batch_sizes[0]) != h0.shape[0]:
        raise RuntimeError(f"batch_sizes must start at the batch size of h0 ({h0.shape[0]}), "
                           f"got {int(batch_sizes[0])}")


def _heads(cell: CellSpec, w_hh) -> int:
    """The number of heads of a block-diagonal recurrent weight [G*H, H/heads], read from its shape (ValueError
    where its width does not divide H); 1 for the other cells."""
    if cell.record.recurrent != "block_diagonal":
        return 1
    hidden, head_dim = w_hh.shape[0] // cell.gates, w_hh.shape[1]
    if hidden == 0:
        return 1
    if head_dim == 0 or hidden % head_dim:
        raise ValueError(f"w_hh of a {cell} layer must be [{cell.gates}*H, H/num_heads] (the heads' diagonal "
                         f"blocks), got {tuple(w_hh.shape)}: its width {head_dim} does not divide H={hidden}")
    return hidden // head_dim


def _contiguous(t):
    return None if t is None else t.contiguous()


def _plain_eager_call(tensors) -> bool:
    """Whether the op can be left out (:func:`fusedrnn.ops.forward_without_autograd`, and with a backward
    :func:`fusedrnn.ops.forward_with_autograd`): an eager call on plain tensors (not traced, no dispatch mode
    such as FakeTensorMode or TorchFunctionMode watching the ops, no tensor subclass), where the op would add
    nothing but its cost."""
    # not under torch.jit.trace either: torch.onnx.export(dynamo=False) traces, and must see the op it exports
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0 and torch._C._len_torch_function_stack() == 0
            and all(t is None or type(t) in _PLAIN for t in tensors))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def layer(
    cell: CellSpec,
    x: torch.Tensor,
    h0: Optional[torch.Tensor],
    c0: Optional[torch.Tensor],
    weights: LayerWeights,
    batch_sizes: Optional[torch.Tensor] = None,
    reverse: bool = False,
    backend: Optional[str] = None,
    *,
    zoneout: float = 0.0,
    zoneout_mask: Optional[torch.Tensor] = None,
) -> LayerOutput:
    """Run ``cell`` over a whole sequence: one op call.

    ``h0``/``c0`` None mean zeros.  ``backend`` None or ``"auto"`` defers to the
    context and the environment (:mod:`fusedrnn.backends`).  ``zoneout`` (a rate in [0, 1)) zones the hidden
    state out as haste does (:mod:`fusedrnn.zoneout`): with ``zoneout_mask`` (the output's shape, 1 where a
    unit takes its new value: :func:`fusedrnn.zoneout.draw_mask`) as in training, without it the expectation
    (evaluation); the cpu backend's kernels run it for every cell but sLSTM, the reference for every cell.
    """
    check_not_traced()  # torch.jit.trace would freeze the op's backend into its program (fusedrnn/torchscript.py)
    weights = LayerWeights(*weights)
    for name, t in (("x", x), ("w_ih", weights.w_ih), ("w_hh", weights.w_hh)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if batch_sizes is not None:
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D packed rows [N, input_size] when batch_sizes is given, got {x.dim()}-D")
        check_batch_sizes(batch_sizes, x.shape[0])
        batch_sizes = _steps_with_rows(batch_sizes)
    h0, c0 = _default_states(cell, x, h0, c0, weights, batch_sizes)
    _check(cell, x, h0, c0, weights, batch_sizes)
    zoneout = _zoneout.check_zoneout(zoneout)
    _zoneout.check_mask(zoneout_mask, zoneout, x, (*x.shape[:-1], h0.shape[-1]))
    return _run(cell, x, h0, c0, weights, batch_sizes, reverse, backend, zoneout, zoneout_mask)


def _default_states(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes):
    """``(h0, c0)`` with zeros for the ones that are None (``c0`` only for a cell with a cell state)."""
    if h0 is None or (c0 is None and cell.has_cell_state):
        hidden = weights.w_hh.shape[0] // cell.gates
        hout = weights.w_proj.shape[0] if weights.w_proj is not None else hidden
        batch = x.shape[1] if batch_sizes is None else (int(batch_sizes[0]) if batch_sizes.numel() else 0)
        if h0 is None:
            h0 = x.new_zeros((batch, hout))
        if c0 is None and cell.has_cell_state:
            c0 = x.new_zeros((h0.shape[0], cell.cell_state_blocks * hidden))
    return h0, c0


def run_checked(cell: CellSpec, x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                weights: LayerWeights, batch_sizes: Optional[torch.Tensor] = None, reverse: bool = False,
                backend: Optional[str] = None, zoneout: float = 0.0,
                zoneout_mask: Optional[torch.Tensor] = None) -> LayerOutput:
    """:func:`layer` without its argument checks, for callers that have made them: the modules, whose
    checks (torch.nn's, then every weight's shape and dtype) cover layer's, so that a call checks each
    thing once (a cell step is a few microseconds of arithmetic; checking twice cost more than it).

    What the caller guarantees: ``weights`` a :class:`LayerWeights` of tensors of the cell's shapes; ``x``
    (3-D, or packed rows with ``batch_sizes`` that passed :func:`check_batch_sizes`), ``h0`` and ``c0``
    (None: zeros; ``c0`` None for a cell without a cell state) of those shapes; every tensor of ``x``'s
    floating dtype and device; ``zoneout`` a float in [0, 1), ``zoneout_mask`` None or of the output's shape,
    dtype and device.
    """
    check_not_traced()  # torch.jit.trace would freeze the op's backend into its program (fusedrnn/torchscript.py)
    if batch_sizes is not None:
        batch_sizes = _steps_with_rows(batch_sizes)
    h0, c0 = _default_states(cell, x, h0, c0, weights, batch_sizes)
    return _run(cell, x, h0, c0, weights, batch_sizes, reverse, backend, zoneout, zoneout_mask)


def _run(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes, reverse, backend, zoneout=0.0,
         zoneout_mask=None) -> LayerOutput:
    """The call once its arguments are checked: the backend resolved, then one op call (or the eager
    equivalent of the op, :func:`_plain_eager_call`)."""
    # zoneout: the kernels take a mask, in evaluation too (1 - zoneout everywhere: the expectation by the
    # same formula, so one kernel path); None without zoneout, where nothing changes
    mask = _zoneout.mask_for(zoneout, zoneout_mask, x, h0) if zoneout else None
    if x.device.type == "meta":
        # meta tensors hold no data, only shapes: whatever backend the module names (it may run CPU
        # tensors only, as modules built on meta and moved later do), the reference gives the shapes
        chosen = backends.get("reference")
    else:
        chosen = backends.resolve(backend, cell, x, weights, mask is not None)
    # A traced graph names the backend the call asked for ("auto" unless a module or the call named one):
    # the ops resolve it where the graph runs (csrc/graph_ops.cpp), not as it resolved on this machine.
    name = (backend if backend not in (None, "auto") else "auto") if torch.compiler.is_compiling() else chosen.name
    if weights.w_hh.shape[0] == 0 or h0.shape[0] == 0:
        # no hidden unit or no row, nothing to compute: the fused kernels assume at least one of each,
        # and the reference gives torch.nn's results for every empty size (h_n = h0, zero gradients)
        chosen = backends.get("reference")
        name = chosen.name
    # A transform the custom op cannot take part in (torch.func.grad, jvp, ...; forward-mode AD): the
    # reference's forward as plain torch ops, which every transform differentiates (called directly:
    # under torch.compile the backend registry is read as it was when tracing began).  Outside any
    # transform and dual level, the common case, the cost is the two checks before the `and`.
    functorch = peek_interpreter_stack() is not None
    if (functorch or forward_ad._current_level >= 0) and backends.differentiable_only(chosen, (x, h0, c0, *weights)):
        res = sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse, zoneout_mask=mask)
        return LayerOutput(res.out, res.h_n, res.c_n if cell.has_cell_state else None)
    # Inference keeps no workspace (the saved activations the backward reads); nor does an exported
    # program, which torch.export makes for inference whether or not grad was enabled while exporting.
    for_backward = torch.is_grad_enabled() and not torch.compiler.is_exporting() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    if _plain_eager_call((x, h0, c0, *weights, mask)):
        define(cell.family)  # the op is not called, but a family's ops exist once it has run (fusedrnn.ops.define)
        if not for_backward:
            return LayerOutput(*forward_without_autograd(cell, chosen, x, h0, c0, weights, batch_sizes, reverse,
                                                         mask))
        if not functorch:  # an autograd.Function outside functorch's transforms (vmap keeps the op)
            return LayerOutput(*forward_with_autograd(cell, chosen, x, h0, c0, weights, batch_sizes, reverse,
                                                      mask))
    # the family's ops take six weights (the C++ schema), or seven with w_extra (ops.op_weights)
    op_args = weights[:op_weights(cell.family)]
    out, h_n, c_n, _ = forward_op(cell.family)(
        _contiguous(x), _contiguous(h0), _contiguous(c0), *(_contiguous(w) for w in op_args),
        batch_sizes, bool(reverse), cell.mode, name, for_backward,
        backends.strategy_for(name, cell, x, backward=False), mask,
    )
    return LayerOutput(out, h_n, c_n if cell.has_cell_state else None)


#: cells whose step op has a double backward (csrc/step_autograd.cpp differentiates ATen's own cell for it)
_ATEN_CELLS = frozenset((("lstm", "lstm"), ("gru", "reset_after"), ("rnn", "tanh"), ("rnn", "relu")))


def run_step(cell: CellSpec, x: torch.Tensor, h: torch.Tensor, c: Optional[torch.Tensor], weights: LayerWeights,
             backend: Optional[str] = None):
    """One time step through the backend's single-step op (:meth:`fusedrnn.backends.base.Backend.step_op`):
    ``(h', c' or None)``, or None where the step must run as a sequence of one step (:func:`run_checked`).

    A decoder calls its cell (or a stack on one step) once per token, at sizes where a step is a few
    microseconds of arithmetic; this path is one op call with its autograd formula in C++.  It takes plain
    eager calls only (:func:`_plain_eager_call`, no functorch transform, forward-mode AD or autocast), no
    projection or extra weights, contiguous weights, and with grad on only the cells whose step op has a
    double backward (not peepholes, not GRU reset_before: their sequence ops have one).  What the caller
    guarantees: ``x`` [B, I] with B, I and H > 0, floating point.  The op checks every other shape, dtype and
    device (the dispatcher finds no kernel for a tensor on another device) and the weights' contiguity; where it refuses a call this returns None, so that the caller's
    general path raises the error torch.nn raises (or, for non-contiguous weights, runs the call).  The op
    changes nothing before its checks pass.
    """
    if weights.w_proj is not None or weights.w_extra is not None or not _direct_call_allowed((x, h, c, *weights)):
        return None
    if torch.is_grad_enabled() and ((cell.family, cell.mode) not in _ATEN_CELLS or weights.w_peep is not None):
        return None
    op = backends.resolve(backend, cell, x, weights).step_op(cell, x)
    if op is None:
        return None
    result = _unless_refused(lambda: op(cell.family, cell.mode, x.contiguous(), h.contiguous(),
                                        None if c is None else c.contiguous(), *weights[:5]))
    return None if result is None else (result[0], result[1] if cell.has_cell_state else None)


#: how the compiled ops' argument checks begin their messages (csrc/include/fusedrnn/op_checks.h)
_KERNEL_REFUSAL = "fusedrnn_C: "


def _direct_call_allowed(tensors) -> bool:
    """Whether a call may go straight to a compiled op (:func:`run_step`, :func:`run_direct`): a plain eager
    call (:func:`_plain_eager_call`) outside functorch's transforms, forward-mode AD and autocast."""
    return not (torch._C._is_any_autocast_enabled() or peek_interpreter_stack() is not None
                or forward_ad._current_level >= 0) and _plain_eager_call(tensors)


def _unless_refused(call):
    """``call()``, or None where a compiled op refused it: its argument checks' RuntimeError
    (:data:`_KERNEL_REFUSAL`), or no kernel for a tensor's device (the dispatcher's NotImplementedError)."""
    try:
        return call()
    except NotImplementedError:
        return None
    except RuntimeError as error:
        if str(error).startswith(_KERNEL_REFUSAL):
            return None
        raise


def run_direct(cell: CellSpec, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor], weights: LayerWeights,
               reverse: bool = False, backend: Optional[str] = None) -> Optional[LayerOutput]:
    """A layer-direction over a padded sequence ``x`` [T, B, I] straight to a compiled backend's kernels, or None
    where the call must take the general path (:func:`run_checked`, after the caller's checks).

    A decoder calls a layer on a few steps at a time; there the general path's Python (torch.nn's checks, then
    each weight's by name) cost more than the kernels.  This path takes the plain eager calls :func:`run_step`
    takes (no functorch transform, forward-mode AD, autocast, tensor subclass or tracing) that the backend
    resolved for them runs with its compiled ops (``cpu``, ``cuda``), whose C++ checks every shape, dtype and
    device; where they refuse the call this returns None, so that the caller's general path raises the error
    torch.nn raises.  What the caller guarantees: ``x`` 3-D with B, I and H > 0, ``h0`` (and ``c0`` for a cell
    with a cell state) tensors, floating point; no zoneout (the caller's general path runs it).
    """
    if not _direct_call_allowed((x, h0, c0, *weights)):
        return None
    chosen = backends.resolve(backend, cell, x, weights)
    if not isinstance(chosen, CompiledBackend):
        return None
    define(cell.family)  # the op is not called, but a family's ops exist once it has run (fusedrnn.ops.define)
    for_backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    run = forward_with_autograd if for_backward else forward_without_autograd
    result = _unless_refused(lambda: run(cell, chosen, x, h0, c0, weights, None, reverse))
    return None if result is None else LayerOutput(result[0], result[1], result[2] if cell.has_cell_state else None)


def lstm_layer(x, h0=None, c0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, w_peep=None, w_proj=None,
               batch_sizes=None, reverse=False, backend=None, zoneout=0.0, zoneout_mask=None) -> LayerOutput:
    """LSTM layer-direction; ``w_peep`` [3H] adds diagonal peepholes, ``w_proj`` [P, H] a projection.  Every
    named layer takes :func:`layer`'s ``zoneout`` and ``zoneout_mask`` (haste's zoneout of h)."""
    return layer(CellSpec("lstm", "lstm"), x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh, w_peep, w_proj),
                 batch_sizes, reverse, backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def gru_layer(x, h0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, reset_after=True,
              batch_sizes=None, reverse=False, backend=None, zoneout=0.0, zoneout_mask=None) -> LayerOutput:
    """GRU layer-direction; ``reset_after=False`` is the original form (r applied to h before W_hn)."""
    mode = "reset_after" if reset_after else "reset_before"
    return layer(CellSpec("gru", mode), x, h0, None, LayerWeights(w_ih, w_hh, b_ih, b_hh),
                 batch_sizes, reverse, backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def check_nonlinearity(nonlinearity, family: str = "rnn") -> None:
    """An Elman RNN's (or an IndRNN's) nonlinearity is one of the family's modes in the cell table
    (torch.nn.RNN's exception and message)."""
    known = modes(family)
    if nonlinearity not in known:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from "
                         + " or ".join(f"'{m}'" for m in known) + ".")


def rnn_layer(x, h0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, nonlinearity="tanh",
              batch_sizes=None, reverse=False, backend=None, zoneout=0.0, zoneout_mask=None) -> LayerOutput:
    """Elman RNN layer-direction, ``nonlinearity`` 'tanh' or 'relu' (or another rnn mode of the cell table)."""
    check_nonlinearity(nonlinearity)
    return layer(CellSpec("rnn", nonlinearity), x, h0, None, LayerWeights(w_ih, w_hh, b_ih, b_hh),
                 batch_sizes, reverse, backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def indrnn_layer(x, h0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, nonlinearity="relu",
                 batch_sizes=None, reverse=False, backend=None, zoneout=0.0, zoneout_mask=None) -> LayerOutput:
    """IndRNN layer-direction: ``h' = act(x W_ih^T + b_ih + w_hh * h + b_hh)``, ``w_hh`` the element-wise
    recurrent weight [H]; ``nonlinearity`` 'relu' or 'tanh'."""
    check_nonlinearity(nonlinearity, "indrnn")
    return layer(CellSpec("indrnn", nonlinearity), x, h0, None, LayerWeights(w_ih, w_hh, b_ih, b_hh),
                 batch_sizes, reverse, backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def _packed_extras(cell: CellSpec, named: dict) -> Optional[torch.Tensor]:
    """A cell's extra weights given by name, concatenated in its record's order into ``w_extra`` (TypeError
    naming one that is missing)."""
    for extra in cell.record.extra_weights:
        if not isinstance(named.get(extra.name), torch.Tensor):
            raise TypeError(f"{extra.name} must be a tensor, got {type(named.get(extra.name)).__name__}")
    return torch.cat([named[extra.name] for extra in cell.record.extra_weights])


def layer_norm_lstm_layer(x, h0=None, c0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, ln_weight_ih=None,
                          ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None, batch_sizes=None, reverse=False,
                          backend=None, zoneout=0.0, zoneout_mask=None) -> LayerOutput:
    """LayerNorm LSTM layer-direction (:class:`fusedrnn.LayerNormLSTM`): the gains ``ln_weight_ih``,
    ``ln_weight_hh`` [4H] of the input and recurrent pre-activations, the gain and shift ``ln_weight_c``,
    ``ln_bias_c`` [H] of the cell state's normalisation."""
    cell = CellSpec("layer_norm_lstm", "layer_norm_lstm")
    w_extra = _packed_extras(cell, dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh,
                                        ln_weight_c=ln_weight_c, ln_bias_c=ln_bias_c))
    return layer(cell, x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh, None, None, w_extra), batch_sizes, reverse,
                 backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def layer_norm_gru_layer(x, h0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *, ln_weight_ih=None,
                         ln_weight_hh=None, batch_sizes=None, reverse=False, backend=None, zoneout=0.0,
                         zoneout_mask=None) -> LayerOutput:
    """LayerNorm GRU layer-direction (:class:`fusedrnn.LayerNormGRU`): the gains ``ln_weight_ih``,
    ``ln_weight_hh`` [3H] of the input and recurrent pre-activations."""
    cell = CellSpec("layer_norm_gru", "layer_norm_gru")
    w_extra = _packed_extras(cell, dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh))
    return layer(cell, x, h0, None, LayerWeights(w_ih, w_hh, b_ih, b_hh, None, None, w_extra), batch_sizes,
                 reverse, backend, zoneout=zoneout, zoneout_mask=zoneout_mask)


def slstm_layer(x, h0=None, c0=None, n0=None, m0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, *,
                batch_sizes=None, reverse=False, backend=None, zoneout=0.0, zoneout_mask=None):
    """sLSTM layer-direction (:class:`fusedrnn.SLSTM`): ``(out, h_n, c_n, n_n, m_n)``.  ``w_ih`` [4H, I],
    ``w_hh`` [4H, H/num_heads] (the heads' diagonal blocks: the number of heads is read from its width), the
    states [B, H] each (None: zeros; c0, n0 and m0 all given or all None)."""
    cell = CellSpec("slstm", "slstm")
    given = [s is not None for s in (c0, n0, m0)]
    if any(given) and not all(given):
        raise ValueError("c0, n0 and m0 of an slstm layer are given together or not at all")
    if all(given) and len({(tuple(s.shape), s.dtype, s.device) for s in (c0, n0, m0)}) > 1:
        raise RuntimeError("c0, n0 and m0 must have one shape, dtype and device, got "
                           + ", ".join(f"{list(s.shape)} {s.dtype} on {s.device}" for s in (c0, n0, m0)))
    c = join_states((h0, c0, n0, m0))[1] if all(given) else None  # the layer's one cell state [B, 3H]
    res = layer(cell, x, h0, c, LayerWeights(w_ih, w_hh, b_ih, b_hh), batch_sizes, reverse, backend,
                zoneout=zoneout, zoneout_mask=zoneout_mask)
    return (res.out, *split_states(cell, res.h_n, res.c_n))
