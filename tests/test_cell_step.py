"""The cell step op (``fusedrnn_C::step``, issue 17): what a cell module's call runs on the CPU.

A plain eager call of ``LSTMCell`` / ``GRUCell`` / ``RNNCell`` goes to one op whose kernels read the
weights as they lie (csrc/cpu/row_product.h, step.h) and whose autograd formula is C++
(csrc/step_autograd.cpp).  Checked here against torch.nn in float64 (float32 tolerances: rtol 1e-5,
and atol 1e-5 for values of order one), at batch sizes on either side of the kernel's limits (4 rows
per tile, 16 rows at most, then the sequence op), sizes that leave vector tails, both thread counts
(bitwise), the cells it must not take with a backward (peepholes, GRU reset_before: no double
backward), its own double backward, weights written behind autograd's back, non-contiguous inputs,
NaN rows and bad arguments.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import backends

_WHY = backends.unavailable_reason("cpu")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"the cpu backend is unavailable: {_WHY}")

#: (name, fusedrnn class, torch.nn class, constructor keywords)
CELLS = [
    ("lstm", fusedrnn.LSTMCell, nn.LSTMCell, {}),
    ("gru", fusedrnn.GRUCell, nn.GRUCell, {}),
    ("rnn-tanh", fusedrnn.RNNCell, nn.RNNCell, {}),
    ("rnn-relu", fusedrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
]
#: (B, I, H): one row; tiles of 4 with 1..3 rows left; I and H off the vector widths (16, 8, 4); 16 rows (the
#: kernel's most); 17 and 33 rows (the sequence op's single step)
SIZES = [(1, 96, 64), (3, 7, 5), (4, 16, 16), (5, 33, 17), (16, 20, 40), (17, 9, 8), (33, 5, 3)]


def _pair(cls, ref_cls, kw, I, H, seed=0):
    torch.manual_seed(seed)
    ref = ref_cls(I, H, **kw).double()
    ours = cls(I, H, **kw)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return ours, ref


def _states(name, B, H, dtype=torch.float32, requires_grad=False):
    n = 2 if name == "lstm" else 1
    return [torch.randn(B, H, dtype=dtype, requires_grad=requires_grad) for _ in range(n)]


def _call(module, name, x, states):
    out = module(x, tuple(states)) if name == "lstm" else module(x, states[0])
    return list(out) if name == "lstm" else [out]


def _is_step(t) -> bool:
    return t.grad_fn is not None and t.grad_fn.name().endswith("StepFunction>")


def _close(got, want):
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_values_and_gradients_match_torch_nn_float64(name, cls, ref_cls, kw, size):
    B, I, H = size
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    x64 = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    s64 = _states(name, B, H, torch.float64, requires_grad=True)
    x = x64.detach().float().requires_grad_()
    s = [t.detach().float().requires_grad_() for t in s64]
    got, want = _call(ours, name, x, s), _call(ref, name, x64, s64)
    assert all(_is_step(t) for t in got)
    upstream = [torch.randn(B, H, dtype=torch.float64) for _ in got]
    got_grads = torch.autograd.grad(got, [x, *s, *ours.parameters()], [u.float() for u in upstream])
    want_grads = torch.autograd.grad(want, [x64, *s64, *ref.parameters()], upstream)
    for a, b in zip(got + list(got_grads), want + list(want_grads)):
        _close(a, b)
    with torch.no_grad():  # inference: the op without a workspace
        for a, b in zip(_call(ours, name, x, s), _call(ref, name, x64, s64)):
            _close(a, b)


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_bitwise_the_same_with_one_and_two_threads(name, cls, ref_cls, kw):
    """16 rows of 64 inputs and units: enough multiply-adds for the products to use both threads."""
    B, I, H = 16, 64, 64
    ours, _ = _pair(cls, ref_cls, kw, I, H)
    x = torch.randn(B, I, requires_grad=True)
    s = _states(name, B, H, requires_grad=True)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = _call(ours, name, x, s)
            grads = torch.autograd.grad(sum(t.sum() for t in out), [x, *s, *ours.parameters()])
            results.append([*out, *grads])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_double_backward_matches_torch_nn(name, cls, ref_cls, kw):
    """A gradient penalty differentiates the step's backward: the op differentiates ATen's own cell."""
    B, I, H = 3, 5, 4
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    ours.double()
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    s = _states(name, B, H, torch.float64)
    penalties = []
    for module in (ours, ref):
        out = _call(module, name, x, s)
        if module is ours:
            assert _is_step(out[0])
        (gx,) = torch.autograd.grad(sum((t * t).sum() for t in out), x, create_graph=True)
        penalties.append(torch.autograd.grad(gx.square().sum(), [x, module.weight_hh, module.weight_ih]))
    for a, b in zip(*penalties):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["peephole", "reset_before"])
def test_cells_without_a_double_backward_take_the_sequence_path_when_grad_is_on(kind):
    """Peepholes and the original GRU have no ATen twin to differentiate twice: with grad on they run as
    a sequence of one step (whose ops have a double backward); without it, the step op, with the same
    results as the reference backend's."""
    torch.manual_seed(0)
    B, I, H = 5, 7, 6
    if kind == "peephole":
        ours, name = fusedrnn.LSTMCell(I, H, peephole=True), "lstm"
    else:
        ours, name = fusedrnn.GRUCell(I, H, reset_after=False), "gru"
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(-0.5, 0.5)
    reference = type(ours)(I, H, **({"peephole": True} if kind == "peephole" else {"reset_after": False}),
                           backend="reference").double()
    reference.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(B, I, requires_grad=True)
    s = _states(name, B, H)
    out = _call(ours, name, x, s)
    assert not _is_step(out[0]) and out[0].grad_fn is not None
    with torch.no_grad():
        fast = _call(ours, name, x, s)
        want = _call(reference, name, x.double(), [t.double() for t in s])
    for a, b, c in zip(fast, out, want):
        _close(a, c)
        _close(b, c)


def test_the_op_refuses_a_double_backward_it_cannot_give():
    B, I, H = 2, 3, 4
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h, c = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64)
    peep = torch.randn(3 * H, dtype=torch.float64)
    h1, _ = torch.ops.fusedrnn_C.step("lstm", "lstm", x, h, c, w_ih, w_hh, None, None, peep)
    with pytest.raises(RuntimeError, match="double backward .* not available .* with peepholes"):
        torch.autograd.grad(h1.sum(), x, create_graph=True)
    # a plain backward works
    h1, _ = torch.ops.fusedrnn_C.step("lstm", "lstm", x, h, c, w_ih, w_hh, None, None, peep)
    assert torch.autograd.grad(h1.sum(), x)[0].shape == x.shape


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_weights_written_behind_autograds_back_count_at_the_next_step(name, cls, ref_cls, kw):
    """Nothing of the weights is kept between calls: a write through .data (no version bump) or numpy
    shows in the very next step."""
    B, I, H = 3, 6, 5
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    x = torch.randn(B, I)
    s = _states(name, B, H)
    with torch.no_grad():
        _call(ours, name, x, s)
        ours.weight_hh.data.mul_(-2.0)
        ours.weight_ih.numpy()[0, :] = 0.25
        ref.weight_hh.data.mul_(-2.0)
        ref.weight_ih.numpy()[0, :] = 0.25
        for a, b in zip(_call(ours, name, x, s), _call(ref, name, x.double(), [t.double() for t in s])):
            _close(a, b)


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_non_contiguous_inputs_and_states(name, cls, ref_cls, kw):
    """A decoder's input is often a column of a larger tensor (an embedding of all steps)."""
    B, I, H = 4, 6, 5
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    x = torch.randn(B, 2 * I)[:, ::2]
    s = [t.t() for t in _states(name, H, B)]  # [B, H] views with strides (1, B)
    assert not x.is_contiguous() and not s[0].is_contiguous()
    with torch.no_grad():
        for a, b in zip(_call(ours, name, x, s), _call(ref, name, x.double(), [t.double() for t in s])):
            _close(a, b)


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_a_nan_row_stays_in_its_row(name, cls, ref_cls, kw):
    """As in torch.nn: NaN in one row's input gives NaN in that row's states and nowhere else."""
    B, I, H = 5, 6, 5
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    x = torch.randn(B, I)
    x[2, 3] = float("nan")
    s = _states(name, B, H)
    with torch.no_grad():
        got, want = _call(ours, name, x, s), _call(ref, name, x.double(), [t.double() for t in s])
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan())
        assert a[2].isnan().all()
        _close(a[[0, 1, 3, 4]], b[[0, 1, 3, 4]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_run_the_sequence_ops_single_step(dtype):
    """The step kernels are float32; the op hands other dtypes to the sequence op with T = 1."""
    B, I, H = 3, 4, 5
    ours, ref = _pair(fusedrnn.LSTMCell, nn.LSTMCell, {}, I, H)
    ours.to(dtype)
    x = torch.randn(B, I, dtype=torch.float64)
    s = _states("lstm", B, H, torch.float64)
    with torch.no_grad():
        got = _call(ours, "lstm", x.to(dtype), [t.to(dtype) for t in s])
        want = _call(ref.to(torch.float64), "lstm", x, s)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **tol)


def test_bad_arguments_to_the_op_raise_naming_them():
    B, I, H = 2, 3, 4
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    step = torch.ops.fusedrnn_C.step
    with pytest.raises(RuntimeError, match="x of a step must be 2-D"):
        step("lstm", "lstm", x.unsqueeze(0), h, c, w_ih, w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        step("lstm", "lstm", x, h[:1], c, w_ih, w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="c0 is required"):
        step("lstm", "lstm", x, h, None, w_ih, w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="w_ih must have shape"):
        step("lstm", "lstm", x, h, c, w_ih[:, :2].contiguous(), w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="has dtype"):
        step("lstm", "lstm", x.double(), h, c, w_ih, w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        step("lstm", "lstm", x, h, c, w_ih.t().contiguous().t(), w_hh, None, None, None)
    with pytest.raises(RuntimeError, match="mode of a gru cell"):
        step("gru", "lstm", x, h, None, w_ih[:3 * H], w_hh[:3 * H], None, None, None)


# ---------------------------------------------------------------------------
# A stack called on one time step (a decoder's stack): each layer-direction is one step op call
# ---------------------------------------------------------------------------

STACKS = [("lstm", fusedrnn.LSTM, nn.LSTM, {}), ("gru", fusedrnn.GRU, nn.GRU, {}),
          ("rnn-relu", fusedrnn.RNN, nn.RNN, {"nonlinearity": "relu"})]


@pytest.fixture
def step_calls(monkeypatch):
    """How many times the cpu backend handed out its step op."""
    from fusedrnn.backends.cpu import CpuBackend
    calls = []
    original = CpuBackend.step_op

    def counted(self, cell, x):
        op = original(self, cell, x)
        calls.append(op is not None)
        return op

    monkeypatch.setattr(CpuBackend, "step_op", counted)
    return calls


#: how the stack is called: (batch_first, initial states given, unbatched input, training with dropout); the
#: last two take the general path, each layer-direction still one step op call
CALLS = {"states": (False, True, False, False), "no-states": (False, False, False, False),
         "batch-first": (True, True, False, False), "unbatched": (False, True, True, False),
         "dropout-training": (False, True, False, True)}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name,cls,ref_cls,kw", STACKS, ids=[c[0] for c in STACKS])
def test_a_stack_on_one_step_runs_step_ops_and_matches_torch_nn(step_calls, name, cls, ref_cls, kw, bidirectional,
                                                                call):
    batch_first, with_states, unbatched, dropout = CALLS[call]
    B, I, H, L = 3, 5, 4, 2
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    options = dict(bidirectional=bidirectional, batch_first=batch_first, dropout=0.5 if dropout else 0.0, **kw)
    ref = ref_cls(I, H, L, **options).double()
    ours = cls(I, H, L, **options)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    if not dropout:  # in training, the dropout masks differ: only where each call went is compared
        ref.eval(), ours.eval()
    shape = (I,) if unbatched else ((B, 1, I) if batch_first else (1, B, I))
    x64 = torch.randn(1, *shape[-1:]) if unbatched else torch.randn(*shape)
    x64 = x64.double().requires_grad_()
    state_shape = (L * D, H) if unbatched else (L * D, B, H)
    s64 = [torch.randn(*state_shape, dtype=torch.float64, requires_grad=True)
           for _ in range(2 if name == "lstm" else 1)]
    x = x64.detach().float().requires_grad_()
    s = [t.detach().float().requires_grad_() for t in s64]
    hx, hx64 = (tuple(s), tuple(s64)) if name == "lstm" else (s[0], s64[0])
    if not with_states:
        hx = hx64 = None
        s, s64 = [], []
    out, states = ours(x, hx)
    assert step_calls == [True] * (L * D)
    if dropout:
        return
    out64, states64 = ref(x64, hx64)
    got = [out, *(states if name == "lstm" else [states])]
    want = [out64, *(states64 if name == "lstm" else [states64])]
    assert out.data_ptr() != got[1].data_ptr()  # the output shares no memory with h_n, as in torch.nn
    out.mul_(1.0)  # torch.nn lets callers edit outputs in place before the backward
    upstream = [torch.randn_like(t) for t in want]
    got_grads = torch.autograd.grad(got, [x, *s, *ours.parameters()], [u.float() for u in upstream])
    want_grads = torch.autograd.grad(want, [x64, *s64, *ref.parameters()], upstream)
    for a, b in zip(got + list(got_grads), want + list(want_grads)):
        _close(a, b)


def test_a_stack_over_two_steps_or_packed_takes_the_sequence_ops(step_calls):
    lstm = fusedrnn.LSTM(3, 4, 2)
    lstm(torch.randn(2, 5, 3))
    packed = nn.utils.rnn.pack_sequence([torch.randn(1, 3), torch.randn(1, 3)])
    lstm(packed)
    assert step_calls == []


@pytest.mark.parametrize("name,cls,ref_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_non_contiguous_weights_run_as_a_sequence_of_one_step(name, cls, ref_cls, kw):
    """The op refuses non-contiguous weights; the call then takes the general path, with the same results."""
    B, I, H = 3, 6, 5
    ours, ref = _pair(cls, ref_cls, kw, I, H)
    ours.weight_hh = nn.Parameter(ours.weight_hh.detach().t().contiguous().t())
    assert not ours.weight_hh.is_contiguous()
    x = torch.randn(B, I, requires_grad=True)
    s = _states(name, B, H)
    got = _call(ours, name, x, s)
    assert not _is_step(got[0])
    want = _call(ref, name, x.double(), [t.double() for t in s])
    for a, b in zip(got, want):
        _close(a, b)
