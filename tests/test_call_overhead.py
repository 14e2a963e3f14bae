"""The lean eager call path (issue 17): what it leaves out must change nothing but the time.

Cells and stacks called one step at a time used to pay, per call, for every check twice, a
backend lookup, and the custom op's dispatch and autograd layers.  Now the modules check once
and call ``functional.run_checked``; eager calls on plain tensors run the op's implementation
directly (``ops.forward_without_autograd``) or, when a backward will follow, its autograd
formula as one ``autograd.Function`` (``ops.forward_with_autograd``).  Here: the eager path gives
the op's results bit for bit, its gradients and its autograd behaviour (saved tensors, in-place
edits, double backward); the op still runs wherever something watches the ops; the backend is
resolved afresh at every call (environment, context, availability); the modules still refuse
what functional.layer refused.  Speed is the benchmark's (``python -m fusedrnn.bench``'s
per-call overhead group), not a test's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, functional, ops
from fusedrnn.backends.reference import ReferenceBackend

_WHY = backends.unavailable_reason("cpu")
needs_cpu = pytest.mark.skipif(_WHY is not None, reason=f"the cpu backend is unavailable: {_WHY}")

T, B, I, H = 3, 4, 5, 6
CASES = [ft.Case(v, ft.Shape(T, B, I, H), o) for v in ("lstm", "lstm-peephole", "gru", "gru-reset-before", "rnn-relu")
         for o in ("padded", "packed-reverse")]


def _eager_grad_fn(out) -> bool:
    return type(out.grad_fn).__name__ == "_EagerLayerBackward"


def _step_grad_fn(out) -> bool:
    """A cell step's node: the step op's autograd formula in C++ (csrc/step_autograd.cpp)."""
    return out.grad_fn is not None and out.grad_fn.name().endswith("StepFunction>")


def _run(case, eager: bool):
    """(outputs, gradients of every input) of one call on fresh leaves: through functional.layer (which
    takes the eager path for these plain tensors) or the registered op called directly."""
    leaves = case.requiring_grad()
    if eager:
        outs = functional.layer(*leaves.args(), backend="cpu")
        assert _eager_grad_fn(outs.out)
    else:
        outs = ops.forward_op(case.cell.family)(*leaves.inputs(), case.batch_sizes, case.reverse, case.cell.mode,
                                                "cpu", True, "auto")[:3]
        assert not _eager_grad_fn(outs[0])
    outs = [t for t in outs[:2]] + ([outs[2]] if case.cell.has_cell_state else [])
    upstream = [g for g in case.upstream[:len(outs)]]
    return outs, torch.autograd.grad(outs, leaves.differentiable(), upstream)


@needs_cpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_eager_autograd_path_gives_the_ops_results_and_gradients_bit_for_bit(case):
    """The same backend runs either way: outputs and every gradient must be equal, not merely close."""
    case = ft.layer_case(case, torch.float32)
    (eager_outs, eager_grads), (op_outs, op_grads) = _run(case, True), _run(case, False)
    assert len(eager_grads) == len(op_grads) == len(case.differentiable())
    for a, b in zip([*eager_outs, *eager_grads], [*op_outs, *op_grads]):
        assert torch.equal(a, b)


@needs_cpu
def test_gradients_only_where_asked_and_the_cells_unused_output():
    """A cell uses h_n and c_n only (``out``'s gradient never flows: the backward fills in its zeros), and
    frozen weights or a state that needs no gradient get none; the others are torch.nn's."""
    torch.manual_seed(0)
    ref, cell = nn.LSTMCell(I, H), fusedrnn.LSTMCell(I, H)
    cell.load_state_dict(ref.state_dict())
    for module in (ref, cell):
        module.weight_ih.requires_grad_(False)
    x, h = torch.randn(B, I, requires_grad=True), torch.randn(B, H)
    c = torch.randn(B, H, requires_grad=True)
    got = cell(x, (h, c))
    assert _step_grad_fn(got[0]) and _step_grad_fn(got[1])
    upstream = [torch.randn(B, H), torch.randn(B, H)]
    names = ["weight_hh", "bias_ih", "bias_hh"]
    got_grads = torch.autograd.grad(got, [x, c, *(getattr(cell, n) for n in names)], upstream)
    want_grads = torch.autograd.grad(ref(x, (h, c)), [x, c, *(getattr(ref, n) for n in names)], upstream)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    got = cell(x, (h, c))
    (got[0].sum() + got[1].sum()).backward()
    assert cell.weight_ih.grad is None and cell.weight_hh.grad is not None


@needs_cpu
def test_double_backward_through_a_cell_step_matches_torch_nn():
    """A gradient penalty: the input gradient's own gradient (the step op's backward differentiates ATen's
    own cell when the graph is to be differentiated again)."""
    torch.manual_seed(0)
    ref, cell = nn.GRUCell(I, H, dtype=torch.float64), fusedrnn.GRUCell(I, H, dtype=torch.float64)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    assert _step_grad_fn(cell(x))
    penalties = []
    for module in (cell, ref):
        (gx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
        penalties.append(torch.autograd.grad(gx.square().sum(), [x, module.weight_hh]))
    for a, b in zip(*penalties):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@needs_cpu
def test_saved_tensors_are_guarded_and_outputs_may_be_edited_in_place():
    """As with the op: editing a saved input before the backward raises; editing an output does not."""
    lstm = fusedrnn.LSTM(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    out, (h_n, c_n) = lstm(x)
    out.relu_()  # torch.nn allows in-place edits of its outputs
    h_n.mul_(2)
    out.sum().backward()
    w = lstm.weight_hh_l0
    out, _ = lstm(x)
    with torch.no_grad():
        w.add_(0.0)  # bumps the version of a tensor the backward needs
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


class _Watcher(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if "fusedrnn" in str(func):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_cpu
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_the_op_still_runs_where_something_watches_the_ops(grad):
    """A TorchFunctionMode (like a dispatch mode, torch.compile or torch.jit.trace) must see the op."""
    cell = fusedrnn.LSTMCell(I, H)
    x = torch.randn(B, I, requires_grad=grad)
    watcher = _Watcher()
    with torch.set_grad_enabled(grad), watcher:
        cell(x)
    assert watcher.ops and all("fusedrnn.lstm_forward" in op for op in watcher.ops), watcher.ops


@needs_cpu
def test_vmap_with_grad_keeps_the_op():
    """vmap alone keeps the op (torch runs it per sample); the eager autograd.Function is not for functorch."""
    cell = fusedrnn.RNNCell(I, H)
    xs = torch.randn(2, B, I)

    def step(x):
        return cell(x)

    out = torch.func.vmap(step)(xs)
    torch.testing.assert_close(out, torch.stack([cell(x) for x in xs]))


# ---------------------------------------------------------------------------
# The backend is resolved at every call, from the current environment, context and availability
# ---------------------------------------------------------------------------

CALLS = []


class CountingBackend(ReferenceBackend):
    name = "test_overhead_counting"

    def forward(self, *args, **kwargs):
        CALLS.append(self.name)
        return super().forward(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_instances", dict(backends._instances))
    monkeypatch.setattr(backends, "_import_errors", dict(backends._import_errors))
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    backends.register(CountingBackend.name, f"{__name__}:CountingBackend")
    CALLS.clear()
    return CountingBackend.name


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("kind", ["cell", "stack"])
def test_consecutive_calls_follow_the_environment_and_the_context(counting, monkeypatch, kind, grad):
    module = fusedrnn.LSTMCell(I, H) if kind == "cell" else fusedrnn.GRU(I, H, 2)
    x = torch.randn(B, I) if kind == "cell" else torch.randn(1, B, I)
    x.requires_grad_(grad)
    per_call = 1 if kind == "cell" else 2

    def ran_counting():
        before = len(CALLS)
        module(x)
        return len(CALLS) - before

    with torch.set_grad_enabled(grad):
        assert ran_counting() == 0
        monkeypatch.setenv("FUSEDRNN_BACKEND", counting)
        assert ran_counting() == per_call
        monkeypatch.setenv("FUSEDRNN_BACKEND", "auto")
        assert ran_counting() == 0
        with backends.use_backend(counting):
            assert ran_counting() == per_call
        monkeypatch.delenv("FUSEDRNN_BACKEND")
        assert ran_counting() == 0
        module.backend = counting
        assert ran_counting() == per_call


def test_availability_is_asked_at_every_call(counting, monkeypatch):
    """A backend that becomes unavailable between two calls is refused at the second."""
    cell = fusedrnn.RNNCell(I, H, backend=counting)
    x = torch.randn(B, I)
    cell(x)
    monkeypatch.setattr(CountingBackend, "availability", lambda self: "switched off by this test")
    with pytest.raises(RuntimeError, match="switched off by this test"):
        cell(x)


# ---------------------------------------------------------------------------
# What functional.layer checked, the modules check
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cell", "stack"])
def test_a_parameter_of_another_dtype_is_refused_naming_it(kind):
    module = fusedrnn.LSTMCell(I, H) if kind == "cell" else fusedrnn.LSTM(I, H, 2)
    name = "bias_hh" if kind == "cell" else "bias_hh_l1"
    getattr(module, name).data = getattr(module, name).data.double()
    x = torch.randn(B, I) if kind == "cell" else torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match=f"parameter {name} has dtype torch.float64"):
        module(x)


def test_a_complex_cell_is_refused_with_a_type_error():
    cell = fusedrnn.GRUCell(I, H, dtype=torch.complex64)
    with pytest.raises(TypeError, match="floating-point"):
        cell(torch.randn(B, I, dtype=torch.complex64))


@pytest.mark.parametrize("kind", ["cell", "stack"])
def test_parametrized_weights_are_read_through_their_parametrization(kind, close):
    """torch.nn.utils.parametrize replaces a parameter by a class property: the modules read that."""

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    if kind == "cell":
        ref, fused, name, x = nn.LSTMCell(I, H), fusedrnn.LSTMCell(I, H), "weight_hh", torch.randn(B, I)
    else:
        ref, fused, name, x = nn.LSTM(I, H, 2), fusedrnn.LSTM(I, H, 2), "weight_hh_l1", torch.randn(T, B, I)
    fused.load_state_dict(ref.state_dict())
    for module in (ref, fused):
        nn.utils.parametrize.register_parametrization(module, name, Doubled())
    close(fused(x)[0], ref(x)[0])


def test_functional_call_weights_are_the_ones_used():
    torch.manual_seed(0)
    cell = fusedrnn.RNNCell(I, H)
    x = torch.randn(B, I)
    zeros = {n: torch.zeros_like(p) for n, p in cell.named_parameters()}
    assert torch.equal(torch.func.functional_call(cell, zeros, (x,)), torch.zeros(B, H))


# ---------------------------------------------------------------------------
# Short layer calls: the modules' direct path (rnn_base._direct_forward, functional.run_direct)
# ---------------------------------------------------------------------------

DIRECT_STACKS = {
    "lstm": lambda **kw: fusedrnn.LSTM(I, H, **kw),
    "lstm-peephole": lambda **kw: fusedrnn.LSTM(I, H, peephole=True, **kw),
    "gru": lambda **kw: fusedrnn.GRU(I, H, **kw),
    "gru-reset-before": lambda **kw: fusedrnn.GRU(I, H, reset_after=False, **kw),
    "rnn-relu": lambda **kw: fusedrnn.RNN(I, H, nonlinearity="relu", **kw),
    "indrnn": lambda **kw: fusedrnn.IndRNN(I, H, **kw),
}


def _call(module, x, hx, grad):
    """(outputs, gradients of x, hx and every parameter) of one call, flattened."""
    module.zero_grad()
    x = x.detach().requires_grad_(grad)
    hx = None if hx is None else tuple(h.detach().requires_grad_(grad) for h in hx)
    with torch.set_grad_enabled(grad):
        out, state = module(x, None if hx is None else hx if len(hx) > 1 else hx[0])
    outs = [out, *(state if isinstance(state, tuple) else (state,))]
    if not grad:
        return outs, []
    sum(o.square().sum() for o in outs).backward()
    return outs, [x.grad, *([] if hx is None else [h.grad for h in hx]), *[p.grad for p in module.parameters()]]


@needs_cpu
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("layout", ["plain", "batch_first-bidirectional-2layers-hx"])
@pytest.mark.parametrize("variant", sorted(DIRECT_STACKS))
def test_the_direct_path_gives_the_general_paths_results_bit_for_bit(monkeypatch, variant, layout, steps, grad):
    """A padded call on plain tensors goes straight to the compiled op (run_step for one step, run_direct for
    more: counted here, so that a change that loses the path fails); its outputs, final states and every
    gradient are the general path's bit for bit."""
    torch.manual_seed(0)
    extended = layout != "plain"
    kw = dict(batch_first=True, bidirectional=True, num_layers=2) if extended else {}
    module = DIRECT_STACKS[variant](**kw)
    shape = (B, steps, I) if extended else (steps, B, I)
    x = torch.randn(shape)
    states = 2 if variant.startswith("lstm") else 1
    hx = tuple(torch.randn(4, B, H) for _ in range(states)) if extended else None
    taken = []
    for name in ("run_step", "run_direct"):
        original = getattr(functional, name)
        monkeypatch.setattr(functional, name, lambda *a, _f=original, _n=name, **k: taken.append(_n) or _f(*a, **k))
    direct = _call(module, x, hx, grad)
    step_op = variant != "indrnn" and (not grad or variant in ("lstm", "gru", "rnn-relu"))  # run_step's cells
    assert ("run_step" if steps == 1 else "run_direct") in taken
    if steps > 1 or step_op:
        assert all(n == ("run_step" if steps == 1 else "run_direct") for n in taken)
    monkeypatch.setattr(module, "_direct_forward", lambda *a: None)
    general = _call(module, x, hx, grad)
    for a, b in zip(direct[0] + direct[1], general[0] + general[1]):
        assert torch.equal(a, b)
