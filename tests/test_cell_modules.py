"""fusedrnn.LSTMCell / GRUCell / RNNCell against their torch.nn twins, and the
seed variants against the hand-written steps."""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings

import pytest
import torch
from torch import nn

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B = 3, 37, 5

# kind -> (torch class, fusedrnn class, constructor options)
KINDS = {
    "lstm": (nn.LSTMCell, fusedrnn.LSTMCell, {}),
    "gru": (nn.GRUCell, fusedrnn.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "relu"}),
}


def make_pair(kind, dtype=torch.float64, **options):
    torch_cls, fused_cls, extra = KINDS[kind]
    reference = torch_cls(I, H, dtype=dtype, **extra, **options)
    fused = fused_cls(I, H, dtype=dtype, **extra, **options)
    fused.load_state_dict(reference.state_dict(), strict=True)
    return reference, fused


def as_tuple(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def random_state(kind, lead, dtype):
    h = torch.randn(*lead, H, dtype=dtype)
    return (h, torch.randn(*lead, H, dtype=dtype)) if kind == "lstm" else h


def step_and_grads(cell, x, hx, seed=0):
    """One step, then the gradients of x, the state and every parameter under a random upstream gradient."""
    x = x.detach().clone().requires_grad_()
    states = None if hx is None else tuple(s.detach().clone().requires_grad_() for s in as_tuple(hx))
    arg = None if states is None else (states if len(states) == 2 else states[0])
    results = as_tuple(cell(x, arg))
    g = torch.Generator().manual_seed(seed)
    loss = sum((r * torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.dtype)).sum() for r in results)
    return results, torch.autograd.grad(loss, [x, *(states or ()), *cell.parameters()])


GRID = list(itertools.product(KINDS, [True, False], [True, False], [False, True], [torch.float64, torch.float32]))


def grid_id(case):
    kind, bias, batched, with_state, dtype = case
    return "-".join([kind, "bias" if bias else "nobias", "batched" if batched else "unbatched",
                     "hx" if with_state else "nohx", str(dtype).split(".")[-1]])


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_parity_with_torch(case, close):
    kind, bias, batched, with_state, dtype = case
    ref, fused = make_pair(kind, dtype, bias=bias)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=dtype)
    hx = random_state(kind, lead, dtype) if with_state else None
    expected, expected_grads = step_and_grads(ref, x, hx)
    actual, actual_grads = step_and_grads(fused, x, hx)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        close(a, e, dtype)
    names = ["input"] + ["state"] * (len(as_tuple(hx)) if with_state else 0) + [n for n, _ in ref.named_parameters()]
    for name, a, e in zip(names, actual_grads, expected_grads):
        close(a, e, dtype, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_stepping_a_sequence_matches_torch(kind, close):
    """The state carried over several steps (decoding), as torch's cell carries it."""
    ref, fused = make_pair(kind)
    xs = torch.randn(4, B, I, dtype=torch.float64)
    hr = hf = random_state(kind, (B,), torch.float64)
    for x in xs:
        hr, hf = ref(x, hr), fused(x, hf)
    for a, e in zip(as_tuple(hf), as_tuple(hr)):
        close(a, e)


CONSTRUCTIONS = [("lstm", True), ("lstm", False), ("gru", True), ("gru", False), ("rnn_tanh", True),
                 ("rnn_relu", False)]


@pytest.mark.parametrize("kind,bias", CONSTRUCTIONS, ids=[f"{k}-bias={b}" for k, b in CONSTRUCTIONS])
def test_same_seed_same_parameters_state_dict_both_ways(kind, bias):
    torch_cls, fused_cls, extra = KINDS[kind]
    torch.manual_seed(99)
    ref = torch_cls(I, H, bias, **extra)
    torch.manual_seed(99)
    fused = fused_cls(I, H, bias, **extra)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(fused.parameters(), ref.parameters()))
    assert list(fused.buffers()) == []
    assert repr(fused) == repr(ref)
    if not bias:
        assert fused.bias_ih is None and fused.bias_hh is None  # registered as None, as torch does
    other = fused_cls(I, H, bias, **extra)
    other.load_state_dict(ref.state_dict(), strict=True)
    back = torch_cls(I, H, bias, **extra)
    back.load_state_dict(other.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), ref.parameters()))


def test_rnn_cell_nonlinearity_is_positional_and_read_at_call_time(close):
    ref = nn.RNNCell(I, H, True, "relu", dtype=torch.float64)
    fused = fusedrnn.RNNCell(I, H, True, "relu", dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    close(fused(x), ref(x))
    ref.nonlinearity = fused.nonlinearity = "tanh"
    close(fused(x), ref(x))


def test_extras_in_repr_and_parameters():
    cell = fusedrnn.LSTMCell(I, H, peephole=True, backend="reference")
    assert repr(cell) == "LSTMCell(3, 37, peephole=True, backend='reference')"
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch"]
    assert cell.weight_ch.shape == (3 * H,)
    assert repr(fusedrnn.GRUCell(I, H, reset_after=False)) == "GRUCell(3, 37, reset_after=False)"


@pytest.mark.parametrize("clone", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_cells_serialise(clone):
    cell = fusedrnn.LSTMCell(I, H, peephole=True, dtype=torch.float64)
    copy_ = clone(cell)
    x = torch.randn(B, I, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(cell(x), copy_(x)))


def test_in_place_edit_takes_effect(close):
    ref, fused = make_pair("gru")
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    before = fused(x, h)
    with torch.no_grad():
        ref.weight_hh.mul_(2)
        fused.weight_hh.mul_(2)
    after = fused(x, h)
    assert not torch.allclose(before, after)
    close(after, ref(x, h))


def test_double_backward_matches_torch(close):
    ref, fused = make_pair("lstm")
    x = torch.randn(B, I, dtype=torch.float64)

    def penalised(cell):
        xi = x.clone().requires_grad_()
        h, c = cell(xi)
        first = torch.autograd.grad((h * c).sum(), [xi, *cell.parameters()], create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in first), [xi, *cell.parameters()])

    for a, e in zip(penalised(fused), penalised(ref)):
        close(a, e)


def test_autocast_casts_the_step():
    cell = fusedrnn.LSTMCell(I, H)
    x = torch.randn(B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, c = cell(x)
    assert h.dtype == c.dtype == torch.bfloat16
    exact = fusedrnn.LSTMCell(I, H, dtype=torch.float64)
    exact.load_state_dict(cell.state_dict())
    torch.testing.assert_close(h.double(), exact(x.double())[0], rtol=0, atol=2e-2)


# ----------------------------------------------------------------------------
# The seed variants against the hand-written steps
# ----------------------------------------------------------------------------

VARIANTS = {
    "lstm_peephole": (lambda **o: fusedrnn.LSTMCell(I, H, peephole=True, **o), "lstm", {}),
    "gru_reset_before": (lambda **o: fusedrnn.GRUCell(I, H, reset_after=False, **o), "gru", {"reset_after": False}),
    "rnn_relu": (lambda **o: fusedrnn.RNNCell(I, H, nonlinearity="relu", **o), "rnn", {"nonlinearity": "relu"}),
}


def handwritten(equations, family, options, cell, x, hx):
    p = {stem: getattr(cell, stem, None) for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch")}
    if family == "lstm":
        return equations.lstm(x, hx[0], hx[1], p)
    if family == "gru":
        return (equations.gru(x, hx, p, **options),)
    return (equations.rnn(x, hx, p, **options),)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_variant_matches_handwritten_step(variant, bias, batched, step_equations, close):
    build, family, options = VARIANTS[variant]
    cell = build(bias=bias, dtype=torch.float64)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=torch.float64)
    hx = random_state(family, lead, torch.float64)
    actual, actual_grads = step_and_grads(cell, x, hx)
    # the same upstream gradient through autograd on the hand-written step
    xi = x.clone().requires_grad_()
    states = tuple(s.clone().requires_grad_() for s in as_tuple(hx))
    expected = handwritten(step_equations, family, options, cell, xi, states if family == "lstm" else states[0])
    g = torch.Generator().manual_seed(0)
    loss = sum((e * torch.randn(e.shape, generator=g, dtype=torch.float64)).sum() for e in expected)
    expected_grads = torch.autograd.grad(loss, [xi, *states, *cell.parameters()])
    for a, e in zip(actual, expected):
        close(a, e)
    for a, e in zip(actual_grads, expected_grads):
        close(a, e)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_cell_steps_equal_the_one_layer_module(variant, close):
    """Stepping the cell over a sequence gives the module's output (same weights, same variant)."""
    build, family, options = VARIANTS[variant]
    cell = build(dtype=torch.float64)
    module_cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[family]
    extra = {"lstm": {"peephole": True}, "gru": {"reset_after": False}, "rnn": {"nonlinearity": "relu"}}[family]
    module = module_cls(I, H, dtype=torch.float64, **extra)
    module.load_state_dict({f"{n}_l0": p for n, p in cell.state_dict().items()}, strict=True)
    xs = torch.randn(4, B, I, dtype=torch.float64)
    out, _ = module(xs)
    state = None
    for t, x in enumerate(xs):
        state = cell(x, state)
        close(as_tuple(state)[0], out[t])
