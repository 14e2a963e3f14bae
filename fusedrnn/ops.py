"""The ops a model's graph holds: one forward and one backward op per cell family.

``torch.ops.fusedrnn.{family}_forward`` run one layer-direction over a
whole sequence (never one call per step: every op call has a fixed cost) and
dispatch to the backend named by their ``backend`` argument (resolved by
:mod:`fusedrnn.functional` in eager calls; ``"auto"`` in a traced graph, so that
the backend is chosen where the graph runs), with the backend's ``strategy``.
Each has a fake kernel, so ``torch.compile`` and ``torch.export`` see one
opaque node, and an autograd formula that calls the matching ``*_backward`` op.

Where they are defined.  The built-in families' ops are defined in C++ by the
extension (csrc/graph_ops.cpp), so that an exported program or an AOTInductor
package runs in a process with the extension library and no Python: there the
compiled kernels run ``"cpu"`` and ``"cuda"`` calls themselves, and this module
adds the fake kernels, the autograd formulas, and the Python implementation
(``{family}_forward_in_python``) they hand every other call to (``"reference"``,
``"triton"``, the CUDA emulation, ``"auto"`` resolved as eager calls resolve
it).  Where the extension is not built, and for a family registered from
Python, this module defines the ops itself with the same schema
(csrc/include/fusedrnn/graph_schema.h; tests/test_graph_ops.py compares).

All families share one schema so that one autograd formula serves them:
arguments a family does not use (``c0``, ``w_peep``, ``w_proj`` outside LSTM)
are None, and outputs it does not have (``c_n`` outside LSTM) are empty
tensors (ops cannot return None).  A family whose cells have extra weights
(layer-norm gains: :class:`fusedrnn.cells.ExtraWeight`) takes ``Tensor? w_extra``
after ``w_proj`` as well (:func:`op_weights`; docs/design.md section 11); such a
family is defined here, never in C++, so the C++ schema is untouched.

The ops of a family are defined the first time it runs (:func:`define`) and
kept: those of the built-in families at import (``torch.ops.fusedrnn.lstm_forward``
exists once fusedrnn is imported, as loading a saved ``torch.export`` program
needs), those of a family registered later (:func:`fusedrnn.cells.register`) on
its first call, possibly while ``torch.compile`` traces it.  An op holds nothing
of its family's record: everything it needs (gates, workspace width) is read
from the cell table at each call, so ops outlive a family's removal from the
table and serve it again if it is registered anew.

Double backward (``create_graph=True``): the backward recomputes the forward
through the differentiable reference (:func:`fusedrnn.reference.sequence_forward`)
and differentiates that, so second derivatives exist whatever backend ran.
"""

import threading
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from . import _extension, backends
from .backends import _constant_when_traced
from .backends.base import Backend, LayerWeights
from .cells import CellSpec, check_family, families
from .reference import autograd_backward

NAMESPACE = "fusedrnn"

_FORWARD_SCHEMA = (
    "(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? w_peep, Tensor? w_proj, Tensor? batch_sizes, bool reverse, str mode, str backend, "
    "bool for_backward=True, str strategy=\"auto\") -> (Tensor, Tensor, Tensor, Tensor)"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor h0, Tensor? c0, "
    "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, "
    "Tensor? batch_sizes, bool reverse, str mode, str backend, Tensor out, Tensor workspace, "
    "bool need_dx=True, bool need_dweights=True, str strategy=\"auto\") "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
# positions of the differentiable inputs of the forward op
_STATE_AND_WEIGHTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peep", "w_proj")
#: the weight arguments of the C++ ops' schema (a family with extra weights adds ``w_extra`` after them)
_WEIGHTS = _STATE_AND_WEIGHTS[3:]


def _absent(like: Tensor) -> Tensor:
    """What an op returns in place of None."""
    return like.new_empty(0)


def _contiguous(tensors):
    """Backends take contiguous tensors.  Done inside the op implementations, at run time: a
    compiled graph may hand the op strides that differ from the ones seen while tracing
    (seen: a non-contiguous grad_out in Inductor's backward even after a traced .contiguous())."""
    return tuple([None if t is None else t.contiguous() for t in tensors])


def _not_a_view(t: Tensor) -> Tensor:
    """``t`` itself, or a tensor over the same memory that is not a view of another tensor.

    Backends return reshapes of their row buffers (``out`` is ``[T*B, H]`` seen as
    ``[T, B, H]``).  A custom op's output that is a view makes autograd treat it as
    "one of several views returned by a function", and then in-place edits of the
    output (``out.relu_()``, ``out.masked_fill_(...)``), which torch.nn allows, raise.
    The base is private to the op, so a plain tensor over its storage (no copy) is
    what the op returns instead: ``detach()``, which is no view for autograd (a fifth of
    the cost of ``new_empty(0).set_(storage, ...)``, which a cell step paid twice).
    """
    if t._base is None:
        return t
    return t.detach()


def _fresh(outputs, inputs):
    """Outputs the op may return: a clone of any that shares storage with an input (ops must
    not alias), and none that is a view (:func:`_not_a_view`); None stays None."""
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel() > 0}
    return tuple([
        t if t is None else t.clone() if t.numel() > 0 and t.untyped_storage().data_ptr() in ptrs else _not_a_view(t)
        for t in outputs
    ])


def _backend(name: str, cell: CellSpec, x: Tensor, weights: LayerWeights):
    """The backend that runs a call naming ``name``: ``"auto"`` (a traced graph's) is resolved here, at run
    time, as :func:`fusedrnn.functional.layer` resolves an eager call (empty sizes included)."""
    if name != "auto":
        return backends.get(name)
    if weights.w_hh.shape[0] == 0 or x.numel() == 0:
        return backends.get("reference")
    return backends.resolve(name, cell, x, weights)


def _run_forward(backend: Backend, cell: CellSpec, tensors, batch_sizes, reverse, for_backward):
    """``backend``'s forward on ``tensors`` (x, h0, c0, *weights) made contiguous: (out, h_n, c_n, workspace),
    None for c_n outside LSTM and for the workspace without ``for_backward``, no output aliasing an input
    or a view.  What the forward op and the op-less eager paths run."""
    x, h0, c0, *weights = tensors = _contiguous(tensors)
    with torch._C._AutoDispatchBelowAutograd():  # see _run_backward
        res = backend.forward(cell, x, h0, c0, LayerWeights(*weights), batch_sizes, reverse,
                              for_backward=for_backward)
    outputs = (res.out, res.h_n, res.c_n, res.workspace if for_backward else None)
    if backend.fresh_outputs:  # nothing to compare (the storage lookups cost a short call several microseconds)
        return tuple([t if t is None else _not_a_view(t) for t in outputs])
    return _fresh(outputs, tensors)


def _run_backward(backend: Backend, cell: CellSpec, grad_out, grad_hn, grad_cn, tensors, batch_sizes, reverse, out,
                  workspace, need_dx, need_dweights):
    """``backend``'s backward on contiguous tensors: the gradients of ``tensors`` (x, h0, c0, *weights), None
    where a tensor is absent or its gradient was not asked for (whatever the backend computed), none
    aliasing an input or a view.  What the backward op and the op-less eager path run."""
    grad_out, grad_hn, grad_cn, out, workspace, *tensors = _contiguous(
        (grad_out, grad_hn, grad_cn, out, workspace, *tensors))
    x, h0, c0, *weights = tensors
    # Below the autograd keys, where an op's implementation runs (torch.library's autograd wrapper
    # redispatches so): the eager paths call this outside any op, and there each ATen call inside a
    # kernel would pass through autograd's kernel for the weights that require grad (a single step:
    # a third of its time, benchmarks/RESULTS.md "Per-call overhead").
    with torch._C._AutoDispatchBelowAutograd():
        res = backend.backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, LayerWeights(*weights), batch_sizes,
                               reverse, out, workspace, need_dx=need_dx, need_dweights=need_dweights)
    dweights = res.dweights if need_dweights else (None,) * len(res.dweights)
    return _fresh((res.dx if need_dx else None, res.dh0, res.dc0, *dweights), tensors)


def _layer_backward(cell: CellSpec, run, tensors, batch_sizes, reverse, out, grads, needs_input_grad):
    """The autograd formula of a layer-direction, for the registered op and the op-less eager path alike: the
    gradients of ``tensors`` (x, h0, c0, *weights) given ``grads`` (of out, h_n, c_n; None where none
    flowed, as ``set_materialize_grads(False)`` leaves them).  ``run(grad_out, grad_hn, grad_cn, need_dx,
    need_dweights)`` runs a backward kernel and returns a gradient per tensor."""
    grad_out, grad_hn, grad_cn = grads
    x, h0, c0 = tensors[:3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if grad_hn is None:
        grad_hn = torch.zeros_like(h0)
    if c0 is None:
        grad_cn = None
    elif grad_cn is None or grad_cn.numel() == 0:
        grad_cn = torch.zeros_like(c0)
    # Double backward, or a cell with no hand-written backward (only its reference step): autograd
    # through the reference forward, here, outside any op (inside an op's implementation autograd
    # records nothing).
    if torch.is_grad_enabled() or not cell.record.hand_written_backward:
        return autograd_backward(cell, tensors, batch_sizes, reverse, (grad_out, grad_hn, grad_cn),
                                 create_graph=torch.is_grad_enabled())
    need = needs_input_grad
    grads = run(grad_out, grad_hn, grad_cn, need[0], any(need[3:]))
    return tuple(g if t is not None and wanted else None for g, t, wanted in zip(grads, tensors, need))


def forward_without_autograd(cell: CellSpec, backend: Backend, x, h0, c0, weights: LayerWeights, batch_sizes,
                             reverse):
    """What the forward op returns for a call no backward will follow, without the op: (out, h_n, c_n or None).

    For eager calls that need no autograd (no grad, or nothing requires it): the op would only add its
    dispatch and autograd layers (a cell step is a few microseconds of arithmetic; those layers cost
    more), so :func:`fusedrnn.functional.layer` calls the backend it resolved directly.  The same rules
    hold: the backend gets contiguous tensors and keeps no workspace; no output aliases an input or is a view.
    """
    return _run_forward(backend, cell, (x, h0, c0, *weights), batch_sizes, reverse, False)[:3]


class _EagerLayer(torch.autograd.Function):
    """The forward op and its autograd formula as one autograd.Function, for eager calls on plain tensors
    that need a backward (:func:`forward_with_autograd`).

    The registered op reaches the same formula through the dispatcher, the C++ graph op, torch.library's
    autograd wrapper and the op's Python implementation, layers that cost several times a cell step's
    arithmetic; here one Function calls the backend.  It saves what the op saves (the inputs as given,
    ``out`` and the workspace) and keeps the workspace out of its outputs.  Old-style (``forward(ctx,
    ...)``) because it runs outside functorch transforms only (:func:`fusedrnn.functional.layer` sends
    those to the op or to the reference).
    """

    @staticmethod
    def forward(ctx, cell, backend, batch_sizes, reverse, x, h0, c0, *weights):
        out, h_n, c_n, workspace = _run_forward(backend, cell, (x, h0, c0, *weights), batch_sizes, reverse, True)
        ctx.save_for_backward(x, h0, c0, *weights, batch_sizes, out, workspace)
        ctx.cell, ctx.backend, ctx.reverse = cell, backend, reverse
        # the backward fills in zeros itself where it must (the cells never use `out`'s gradient)
        ctx.set_materialize_grads(False)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        *tensors, batch_sizes, out, workspace = ctx.saved_tensors
        cell, backend, reverse = ctx.cell, ctx.backend, ctx.reverse

        def run(*grads_and_needs):
            return _run_backward(backend, cell, *grads_and_needs[:3], tensors, batch_sizes, reverse, out, workspace,
                                 *grads_and_needs[3:])

        grads = _layer_backward(cell, run, tensors, batch_sizes, reverse, out, (grad_out, grad_hn, grad_cn),
                                ctx.needs_input_grad[4:])
        return (None, None, None, None, *grads)


def forward_with_autograd(cell: CellSpec, backend: Backend, x, h0, c0, weights: LayerWeights, batch_sizes,
                          reverse):
    """The forward op's results and autograd formula without the op, for eager calls on plain tensors that need
    a backward: (out, h_n, c_n or None), differentiable (:class:`_EagerLayer`)."""
    return _EagerLayer.apply(cell, backend, batch_sizes, bool(reverse), x, h0, c0, *weights)


def _schemas(weights: int) -> Tuple[str, str]:
    """The forward and backward schemas for ``weights`` weight arguments: the C++ ops' (six, up to ``w_proj``),
    or with ``Tensor? w_extra`` after ``w_proj`` (seven) for a family whose cells have extra weights."""
    if weights == len(_WEIGHTS):
        return _FORWARD_SCHEMA, _BACKWARD_SCHEMA
    extra = "Tensor? w_proj, Tensor? w_extra, "
    return (_FORWARD_SCHEMA.replace("Tensor? w_proj, ", extra),
            _BACKWARD_SCHEMA.replace("Tensor? w_proj, ", extra).replace("-> (Tensor, ", "-> (Tensor, Tensor, ", 1))


def op_weights(family: str) -> int:
    """How many weight arguments ``family``'s ops take: six (``w_ih`` .. ``w_proj``: the C++ ops' schema), or
    seven with ``w_extra`` where a cell of the family has extra weights (a family defined from Python)."""
    from .cells import CELLS

    return len(_WEIGHTS) + any(r.extra_weights for r in CELLS.values() if r.family == family)


def _make_ops(family: str):
    # The ops take (x, h0, c0, *weights, ...): six weights (w_ih .. w_proj), or seven with w_extra for a family
    # with extra weights (layer-norm gains), defined here; the arguments are split by position.
    nw = op_weights(family)
    forward_schema, backward_schema = _schemas(nw)

    def forward_args(args):
        """(cell, x, h0, c0, weights, batch_sizes, reverse, backend, for_backward) of a forward call."""
        x, h0, c0, *rest = args
        weights, (batch_sizes, reverse, mode, backend, *options) = LayerWeights(*rest[:nw]), rest[nw:]
        return CellSpec(family, mode), x, h0, c0, weights, batch_sizes, reverse, backend, \
            options[0] if options else True

    # `strategy` (the last argument): the one the backend's own setting gives (backends.strategy_for), which
    # the backend reads itself
    def forward_impl(*args):
        cell, x, h0, c0, weights, batch_sizes, reverse, backend, for_backward = forward_args(args)
        outputs = _run_forward(_backend(backend, cell, x, weights), cell, (x, h0, c0, *weights), batch_sizes,
                               reverse, for_backward)
        return tuple(_absent(x) if t is None else t for t in outputs)  # whatever the backend kept

    def forward_fake(*args):
        cell, x, h0, c0, weights, _, _, _, for_backward = forward_args(args)
        hidden = weights.w_hh.shape[0] // cell.gates
        lead = x.shape[:-1]
        return (
            x.new_empty((*lead, h0.shape[-1])),
            h0.new_empty(h0.shape),
            c0.new_empty(c0.shape) if c0 is not None else _absent(x),
            x.new_empty((*lead, cell.workspace_blocks * hidden)) if for_backward else _absent(x),
        )

    def backward_args(args):
        """(cell, upstream grads, tensors (x, h0, c0, *weights), batch_sizes, reverse, backend, out, workspace,
        need_dx, need_dweights) of a backward call."""
        grad_out, grad_hn, grad_cn, *rest = args
        tensors, (batch_sizes, reverse, mode, backend, out, workspace, *options) = rest[:3 + nw], rest[3 + nw:]
        need_dx = options[0] if options else True
        need_dweights = options[1] if len(options) > 1 else True
        return (CellSpec(family, mode), (grad_out, grad_hn, grad_cn), tuple(tensors), batch_sizes, reverse, backend,
                out, workspace, need_dx, need_dweights)

    def backward_impl(*args):
        cell, upstream, tensors, batch_sizes, reverse, backend, out, workspace, need_dx, need_dweights = \
            backward_args(args)
        x, weights = tensors[0], LayerWeights(*tensors[3:])
        grads = _run_backward(_backend(backend, cell, x, weights), cell, *upstream, tensors, batch_sizes, reverse,
                              out, workspace, need_dx, need_dweights)
        # what was not asked for is empty; one gradient per differentiable input of the schema
        return tuple(_absent(x) if g is None else g for g in grads[:3 + nw])

    def backward_fake(*args):
        _, _, tensors, _, _, _, _, _, need_dx, need_dweights = backward_args(args)
        wanted = (need_dx, True, True, *(need_dweights,) * nw)
        return tuple(_absent(tensors[0]) if t is None or not want else t.new_empty(t.shape)
                     for t, want in zip(tensors, wanted))

    forward_name, backward_name = f"{NAMESPACE}::{family}_forward", f"{NAMESPACE}::{family}_backward"
    if _defined_in_cpp(forward_name):
        # the graph ops are the extension's; what they hand to Python is defined here
        for name, impl, schema in ((forward_name, forward_impl, forward_schema),
                                   (backward_name, backward_impl, backward_schema)):
            torch.library.custom_op(f"{name}_in_python", impl, mutates_args=(), schema=schema)
        fwd = getattr(torch.ops.fusedrnn, f"{family}_forward").default
        bwd = getattr(torch.ops.fusedrnn, f"{family}_backward").default
    else:
        fwd = torch.library.custom_op(forward_name, forward_impl, mutates_args=(), schema=forward_schema)
        bwd = torch.library.custom_op(backward_name, backward_impl, mutates_args=(), schema=backward_schema)
    torch.library.register_fake(forward_name, forward_fake)
    torch.library.register_fake(backward_name, backward_fake)

    def setup_context(ctx, inputs, output):
        tensors, (batch_sizes, reverse, mode, backend, *rest) = inputs[:3 + nw], inputs[3 + nw:]
        out, _, _, workspace = output
        ctx.for_backward = rest[0] if rest else True
        ctx.strategy = rest[1] if len(rest) > 1 else "auto"
        ctx.save_for_backward(*tensors, batch_sizes, out, workspace)
        ctx.reverse, ctx.mode, ctx.backend = reverse, mode, backend
        ctx.mark_non_differentiable(workspace)
        # the backward below fills in zeros itself where it must; autograd's default would
        # zero-fill the workspace's gradient on every call (seen: a measurable share of an LSTM training step)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, grad_hn, grad_cn, _grad_workspace):
        *tensors, batch_sizes, out, workspace = ctx.saved_tensors
        if not ctx.for_backward:
            raise RuntimeError(f"fusedrnn::{family}_forward ran with for_backward=False, so it kept no "
                               "workspace to differentiate; call it with for_backward=True")
        tensors = tuple(tensors)
        cell = CellSpec(family, ctx.mode)

        def run(grad_out, grad_hn, grad_cn, need_dx, need_dweights):
            strategy = backends.strategy_for(ctx.backend, cell, tensors[0], backward=True)
            return bwd(grad_out, grad_hn, grad_cn, *tensors, batch_sizes, ctx.reverse, ctx.mode, ctx.backend,
                       out, workspace, need_dx, need_dweights, strategy)

        grads = _layer_backward(cell, run, tensors, batch_sizes, ctx.reverse, out, (grad_out, grad_hn, grad_cn),
                                ctx.needs_input_grad)
        return (*grads, None, None, None, None, None, None)  # batch_sizes .. for_backward, strategy

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)
    return fwd, bwd


def _defined_in_cpp(name: str) -> bool:
    """Whether the extension defines the op ``name`` (csrc/graph_ops.cpp), loading the extension first."""
    if _extension.load() is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd")
    except RuntimeError:  # no such op: a family the extension does not know
        return False


#: family -> (forward op, backward op), each family's defined once (torch.library refuses a second definition):
#: the extension's OpOverloads, or CustomOpDefs defined here
_OPS: Dict[str, Tuple[Callable, Callable]] = {}
# two threads running a new family for the first time must not both define its ops
_DEFINING = threading.Lock()


# torch._dynamo cannot trace torch.library's definitions, and the first call of a registered family
# may come while torch.compile traces (or torch.export strictly traces) it: marked so, Dynamo runs
# this function itself at trace time and takes its result (the family's name) as a constant.
@_constant_when_traced
def define(family: str) -> str:
    """Define the custom ops of ``family`` (a family of the cell table) unless they are defined; returns
    ``family``.  Called by :func:`forward_op`; call it directly to make ``torch.ops.fusedrnn.<family>_*``
    exist before anything runs the family (to load a saved ``torch.export`` program, say)."""
    if family not in _OPS:
        with _DEFINING:
            if family not in _OPS:
                check_family(family)
                if not family.isidentifier():  # it names the ops
                    raise ValueError(f"cell family {family!r} cannot name a custom op: it must be a Python "
                                     "identifier (letters, digits, underscores)")
                _OPS[family] = _make_ops(family)
    return family


def forward_op(family: str):
    """The custom op running ``family``'s sequence forward (defined on first use)."""
    return _OPS[define(family)][0]


def backward_op(family: str):
    return _OPS[define(family)][1]


# the ops of every family in the table at import exist once fusedrnn is imported (a saved torch.export
# program names them): the built-in families' and those without kernels in every backend
for _family in families():
    define(_family)
del _family
