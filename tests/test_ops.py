"""The torch.library ops and the functional API: schema, fake kernels, autograd, checks."""

import pytest
import torch
from torch.library import opcheck

import fusedrnn.testing as ft
from fusedrnn import functional, ops
from fusedrnn.backends.base import LayerWeights

OPCHECK_CASES = [
    ft.Case("lstm-peephole-proj", ft.SMALL_SHAPE, "packed-reverse", projection=4),
    ft.Case("lstm", ft.SMALL_SHAPE, "no-bias"),
    ft.Case("gru", ft.SMALL_SHAPE, "packed"),
    ft.Case("gru-reset-before", ft.SMALL_SHAPE, "reverse"),
    ft.Case("rnn-relu", ft.SMALL_SHAPE, "packed-reverse"),
    ft.Case("rnn-tanh", ft.SMALL_SHAPE, "no-bias"),
]


def _op_args(case, backend="reference"):
    return (*case.inputs(), case.batch_sizes, case.reverse, case.cell.mode, backend)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_forward_op_opcheck(case):
    case = ft.layer_case(case)
    args = list(_op_args(case))
    for i in range(9):  # x, h0, c0, weights: differentiable inputs
        if args[i] is not None:
            args[i] = args[i].clone().requires_grad_()
    opcheck(ops.forward_op(case.cell.family), tuple(args))


@pytest.mark.parametrize("case", OPCHECK_CASES[:3], ids=str)
def test_forward_op_opcheck_without_workspace(case):
    """for_backward=False: the fake kernel's empty workspace matches the real one's."""
    case = ft.layer_case(case)
    family = case.cell.family
    opcheck(ops.forward_op(family), (*_op_args(case), False))
    assert ops.forward_op(family)(*_op_args(case), False)[3].numel() == 0


def test_backward_op_opcheck_with_skipped_gradients():
    """need_dx / need_dweights False: empty gradients, the same in the fake kernel as in the real one."""
    case = ft.layer_case(ft.Case("lstm-peephole", ft.SMALL_SHAPE, "packed"))
    out, h_n, c_n, ws = ops.forward_op("lstm")(*_op_args(case))
    args = (*case.upstream, *case.inputs(), case.batch_sizes, case.reverse, "lstm", "reference", out, ws)
    for need_dx, need_dweights in ((False, True), (True, False)):
        opcheck(ops.backward_op("lstm"), (*args, need_dx, need_dweights))
        grads = ops.backward_op("lstm")(*args, need_dx, need_dweights)
        assert (grads[0].numel() > 0) == need_dx
        assert all((g.numel() > 0) == need_dweights for g in grads[3:8])


def test_differentiating_a_forward_without_workspace_raises():
    case = ft.layer_case(ft.Case("lstm", ft.SMALL_SHAPE))
    x, *rest = case.inputs()
    out = ops.forward_op("lstm")(x.clone().requires_grad_(), *rest, *_op_args(case)[9:], False)[0]
    with pytest.raises(RuntimeError, match="for_backward=False"):
        out.sum().backward()


def test_no_grad_layer_matches_grad_layer():
    """functional.layer asks for no workspace under no_grad; the outputs do not change."""
    case = ft.layer_case(ft.Case("gru-reset-before", ft.SMALL_SHAPE, "packed"))
    x, h0, c0, *w = case.inputs()
    with_grad = functional.layer(case.cell, x.clone().requires_grad_(), h0, c0, LayerWeights(*w), case.batch_sizes,
                                 case.reverse)
    with torch.no_grad():
        without = functional.layer(case.cell, x, h0, c0, LayerWeights(*w), case.batch_sizes, case.reverse)
    for a, b in zip(with_grad, without):
        if a is not None:
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_backward_op_opcheck(case):
    case = ft.layer_case(case)
    family = case.cell.family
    out, h_n, c_n, ws = ops.forward_op(family)(*_op_args(case))
    args = (*case.upstream, *case.inputs(), case.batch_sizes, case.reverse, case.cell.mode, "reference", out, ws)
    opcheck(ops.backward_op(family), args)


def _layer_fn(case):
    """A function of the differentiable inputs running the layer through the ops."""
    present = [i for i, t in enumerate(case.inputs()) if t is not None]

    def fn(*tensors):
        full = list(case.inputs())
        for i, t in zip(present, tensors):
            full[i] = t
        x, h0, c0, *w = full
        res = functional.layer(case.cell, x, h0, c0, LayerWeights(*w), case.batch_sizes, case.reverse,
                               backend="reference")
        return tuple(t for t in res if t is not None)

    return fn


#: every cell once, the LSTM with peepholes
GRAD_VARIANTS = [name for name, v in ft.VARIANTS.items() if not v.projection and v.peephole == (v.cell.family == "lstm")]
GRAD_CASES = [ft.Case(v, ft.Shape(T=3, B=3, I=2, H=3), o) for v in GRAD_VARIANTS for o in ("padded", "packed-reverse")]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradcheck_through_ops(case):
    case = ft.layer_case(case)
    inputs = [t.clone().requires_grad_() for t in case.differentiable()]
    assert torch.autograd.gradcheck(_layer_fn(case), inputs)


@pytest.mark.parametrize("variant", ["lstm", "gru-reset-before", "rnn-tanh"])
def test_gradgradcheck_through_ops(variant):
    """Double backward (gradient penalties) works through the ops."""
    case = ft.layer_case(ft.Case(variant, ft.Shape(T=2, B=2, I=2, H=2), "packed", lengths=(2, 1)))
    inputs = [t.clone().requires_grad_() for t in case.differentiable()]
    assert torch.autograd.gradgradcheck(_layer_fn(case), inputs)


def test_one_op_call_per_layer_direction():
    """The layer is a single op call whatever the sequence length (no per-step ops at the boundary)."""
    case = ft.layer_case(ft.Case("lstm", ft.SMALL_SHAPE._replace(T=9)))
    calls = []

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if isinstance(func, torch._ops.OpOverloadPacket) or "fusedrnn" in str(func):
                calls.append(str(func))
            return func(*args, **(kwargs or {}))

    with Count():
        functional.layer(case.cell, *case.inputs()[:3], case.weights, backend="reference")
    assert calls == ["fusedrnn.lstm_forward.default"] or calls == ["fusedrnn.lstm_forward"], calls


def test_compile_fullgraph_functional():
    """torch.compile(fullgraph=True) traces the functional API without graph breaks."""
    case = ft.layer_case(ft.Case("gru-reset-before", ft.SMALL_SHAPE), torch.float32)
    w = [t.clone().requires_grad_() for t in case.weights[:4]]

    def f(x):
        out, h_n, _ = functional.gru_layer(x, None, *w, reset_after=False, backend="reference")
        return out.sum() + h_n.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_loss = f(case.x)
    eager_grads = torch.autograd.grad(eager_loss, w)
    loss = compiled(case.x)
    grads = torch.autograd.grad(loss, w)
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------
# argument checks of the functional API
# ---------------------------------------------------------------------------


def _lstm(**override):
    case = ft.layer_case(ft.Case("lstm", ft.SMALL_SHAPE), torch.float32)
    args = dict(x=case.x, h0=case.h0, c0=case.c0, w_ih=case.weights.w_ih, w_hh=case.weights.w_hh,
                b_ih=case.weights.b_ih, b_hh=case.weights.b_hh)
    args.update(override)
    return functional.lstm_layer(**args)


def test_functional_runs_with_defaults():
    out, h_n, c_n = _lstm(h0=None, c0=None)
    assert out.shape == (4, 3, 6) and h_n.shape == (3, 6) and c_n.shape == (3, 6)


@pytest.mark.parametrize("override,exc,match", [
    (dict(x=torch.randn(4, 3, 7)), RuntimeError, "x must have shape"),
    (dict(x=torch.randn(3, 5)), ValueError, "x must be 3-D"),
    (dict(h0=torch.randn(2, 6)), RuntimeError, "h0 must have shape"),
    (dict(c0=torch.randn(3, 5)), RuntimeError, "c0 must have shape"),
    (dict(h0=torch.randn(3, 6, dtype=torch.float64)), RuntimeError, "h0 has dtype"),
    (dict(b_ih=torch.randn(5)), RuntimeError, "b_ih must have shape"),
    (dict(w_hh=torch.randn(23, 6)), ValueError, "w_hh"),
    (dict(x=torch.randn(4, 3, 5, device="meta")), RuntimeError, "device"),
], ids=["input-size", "x-2d", "h0-batch", "c0-hidden", "h0-dtype", "bias-shape", "gates", "device"])
def test_functional_rejects_bad_arguments(override, exc, match):
    with pytest.raises(exc, match=match):
        _lstm(**override)


@pytest.mark.parametrize("batch_sizes,match", [
    (torch.tensor([3, 1, 2]), "non-increasing"),
    (torch.tensor([3, 2], dtype=torch.int32), "int64"),
    (torch.tensor([3, 3]), "sum"),
    (torch.tensor([2, 2, 1]), "start at the batch size"),
], ids=["increasing", "int32", "sum", "first"])
def test_functional_rejects_bad_batch_sizes(batch_sizes, match):
    """RuntimeError, as torch.nn's modules raise for these (functional.check_batch_sizes)."""
    case = ft.layer_case(ft.Case("gru", ft.SMALL_SHAPE._replace(T=2), "packed", lengths=(2, 2, 1)), torch.float32)
    with pytest.raises(RuntimeError, match=match):
        functional.layer(case.cell, case.x, case.h0, None, case.weights, batch_sizes)


def test_rnn_layer_rejects_unknown_nonlinearity():
    case = ft.layer_case(ft.Case("rnn-tanh", ft.SMALL_SHAPE), torch.float32)
    with pytest.raises(ValueError, match="nonlinearity"):
        functional.rnn_layer(case.x, case.h0, *case.weights[:4], nonlinearity="sigmoid")
