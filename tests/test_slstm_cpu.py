"""sLSTM on the ``cpu`` backend (csrc/cpu/slstm_recurrence.h) against the reference backend.

The kernels compute the reference's step (``fusedrnn.reference.slstm_step``) and its hand-written backward
(``_slstm_step_backward``) in the same order of operations, the block-diagonal products by heads with a
micro-kernel: float64 to 1e-10 and float32 to 1e-5 (relative to the largest magnitude, fusedrnn.testing's
measure), outputs, final states and every gradient, across heads (1, 2, 4), batch 1 and odd batches, hidden
sizes that are no multiple of the SIMD width, packed sequences of unequal lengths, both directions and a
two-layer bidirectional module; float64 gradcheck through the kernel ops; the same bits with 1 and 2 threads;
the checker (``python -m fusedrnn.check``) on the cpu backend.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, check, functional
from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellSpec

REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
_WHY = backends.unavailable_reason("cpu")
if _WHY is not None and not REQUIRED:
    pytest.skip(f"the fused CPU kernels are not built in this checkout: {_WHY}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = backends.get("cpu")
SLSTM = CellSpec("slstm", "slstm")
F64, F32 = torch.float64, torch.float32
HEADS = (1, 2, 4)


def random_states(*shape, dtype=F64, generator=None):
    """Initial (h, c, n, m) where the cell's own steps take them: n >= 1, |c| <= n."""
    h, c, m = (torch.randn(*shape, dtype=dtype, generator=generator) for _ in range(3))
    n = 1 + torch.rand(*shape, dtype=dtype, generator=generator) * 3
    return (h, c.clamp(-1, 1) * n, n, m)


def twins(dtype, heads, **kwargs):
    """An SLSTM on the cpu backend and its twin on the reference backend, the same parameters (biases
    away from zero so that both are exercised)."""
    torch.manual_seed(0)
    mine = fusedrnn.SLSTM(dtype=dtype, num_heads=heads, backend="cpu", **kwargs)
    with torch.no_grad():
        for name, p in mine.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    theirs = fusedrnn.SLSTM(dtype=dtype, num_heads=heads, backend="reference", **kwargs)
    theirs.load_state_dict(mine.state_dict())
    return mine, theirs


def results(module, x, states, grad_seed=1):
    """Outputs, final states and the gradients of x, the initial states and every parameter for a fixed
    random weighting of the outputs and final states."""
    leaves = [x, *states, *module.parameters()]
    out, finals = module(x, states)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    g = torch.Generator().manual_seed(grad_seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (data, *finals))
    return [data, *finals, *torch.autograd.grad(loss, leaves)]


NAMES = ["out", "h_n", "c_n", "n_n", "m_n", "dx", "dh0", "dc0", "dn0", "dm0"]


def assert_close_to_reference(mine, theirs, dtype, params):
    names = NAMES + [f"d{n}" for n, _ in params]
    for name, a, b in zip(names, mine, theirs):
        _, rel = ft.error(a.detach(), b.detach())
        assert rel <= ft.tolerance(dtype), f"{name}: relative error {rel:.2e} > {ft.tolerance(dtype):.0e}"


def leaves_of(x, states):
    return x.requires_grad_(), tuple(s.requires_grad_() for s in states)


# ----------------------------------------------------------------------------
# Against the reference backend
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (F64, F32), ids=ft.dtype_name)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("B, H", [(1, 20), (5, 36), (3, 8)])
def test_padded_with_initial_states(dtype, heads, B, H):
    """H = 20 and 36: head sizes 20, 10, 5 and 36, 18, 9, no multiple of the SIMD width (a unit panel
    shorter than a vector at the end of each head)."""
    mine, theirs = twins(dtype, heads, input_size=7, hidden_size=H)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, B, 7, dtype=dtype, generator=g)
    states = random_states(1, B, H, dtype=dtype, generator=g)
    got = results(mine, *leaves_of(x.clone(), [s.clone() for s in states]))
    want = results(theirs, *leaves_of(x.clone(), [s.clone() for s in states]))
    assert_close_to_reference(got, want, dtype, list(mine.named_parameters()))


@pytest.mark.parametrize("dtype", (F64, F32), ids=ft.dtype_name)
@pytest.mark.parametrize("heads", HEADS)
def test_packed_bidirectional_two_layers(dtype, heads):
    """Unsorted unequal lengths: the forward direction's batch shrinks over time, the reverse one's grows
    (rows starting from the initial states midway, rows.h); both layers, both directions."""
    mine, theirs = twins(dtype, heads, input_size=5, hidden_size=12, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, 5, dtype=dtype, generator=g)
    lengths = torch.tensor([3, 7, 1, 5, 7])
    states = random_states(4, 5, 12, dtype=dtype, generator=g)
    packed = lambda t: pack_padded_sequence(t, lengths, enforce_sorted=False)  # noqa: E731

    def run(module):
        xs = x.clone().requires_grad_()
        s = tuple(t.clone().requires_grad_() for t in states)
        out, finals = module(packed(xs), s)
        gen = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=dtype)).sum() for t in (out.data, *finals))
        return [out.data, *finals, *torch.autograd.grad(loss, [xs, *s, *module.parameters()])]

    assert_close_to_reference(run(mine), run(theirs), dtype, list(mine.named_parameters()))


@pytest.mark.parametrize("reverse", (False, True))
@pytest.mark.parametrize("heads", HEADS)
def test_a_layer_direction_from_zero_states_without_biases(reverse, heads):
    """The first step from zero states (n = 0: m' = ĩ, every unit), no biases, each direction, float64."""
    g = torch.Generator().manual_seed(4)
    H, I = 16, 3
    x = torch.randn(5, 3, I, dtype=F64, generator=g)
    w_ih = torch.randn(4 * H, I, dtype=F64, generator=g)
    w_hh = torch.randn(4 * H, H // heads, dtype=F64, generator=g) * 0.5
    res = {}
    for backend in ("cpu", "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, w_ih, w_hh)]
        out = functional.slstm_layer(leaves[0], None, None, None, None, leaves[1], leaves[2], reverse=reverse,
                                     backend=backend)
        res[backend] = [*out, *torch.autograd.grad(out[0].sin().sum() + sum(t.sum() for t in out[1:]), leaves)]
    for i, (a, b) in enumerate(zip(res["cpu"], res["reference"])):
        _, rel = ft.error(a.detach(), b.detach())
        assert rel <= ft.tolerance(F64), (i, rel)


# ----------------------------------------------------------------------------
# Through the kernel ops
# ----------------------------------------------------------------------------


def op_problem(dtype, heads, H=8, B=3, T=4, I=3, seed=5, first_step=True):
    """Packed rows of lengths 4, 3, 2 (the last row's last step the batch's shortest); with ``first_step`` two
    units of the first row start at n = 0 (the select of m')."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T * B - 3, I, dtype=dtype, generator=g)  # packed rows
    batch_sizes = torch.tensor([3, 3, 2, 1])
    h0, c, n, m = random_states(B, H, dtype=dtype, generator=g)
    if first_step:
        n[0, :2] = 0
        c[0, :2] = 0
    c0 = torch.cat([c, n, m], dim=1)
    w = LayerWeights(torch.randn(4 * H, I, dtype=dtype, generator=g), torch.randn(4 * H, H // heads, dtype=dtype,
                     generator=g) * 0.5, torch.randn(4 * H, dtype=dtype, generator=g),
                     torch.randn(4 * H, dtype=dtype, generator=g))
    return x, h0, c0, w, batch_sizes


@pytest.mark.parametrize("heads", (1, 2, 4))
@pytest.mark.parametrize("reverse", (False, True))
def test_float64_gradcheck_through_the_cpu_op(heads, reverse):
    """From states with n >= 1 (their gradients too: at n = 0 the select of m' is not differentiable in n), then
    from zero states (every unit's first step takes m' = ĩ)."""
    x, h0, c0, w, bs = op_problem(F64, heads, first_step=False)
    leaves = [t.clone().requires_grad_() for t in (x, h0, c0, *w[:4])]

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        res = functional.layer(SLSTM, x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh), bs, reverse, backend="cpu")
        return res.out, res.h_n, res.c_n

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)
    zeros = torch.zeros_like(h0), torch.zeros_like(c0)
    assert torch.autograd.gradcheck(lambda x, *w: fn(x, *zeros, *w), [leaves[0], *leaves[3:]], eps=1e-6, atol=1e-7)


def op_results(x, h0, c0, w, bs, reverse, strategy="auto", poison=False):
    ops = torch.ops.fusedrnn_C
    out, h_n, c_n, ws = ops.forward("slstm", "slstm", x, h0, c0, *w[:4], None, None, bs, reverse, strategy, poison)
    g = torch.Generator().manual_seed(6)
    g_out, g_h, g_c = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out, h_n, c_n))
    grads = ops.backward("slstm", "slstm", g_out, g_h, g_c, x, h0, c0, *w[:4], None, None, bs, reverse, out, ws, strategy,
                         poison)
    return [out, h_n, c_n, ws, *grads], (g_out, g_h, g_c)


@pytest.mark.parametrize("reverse", (False, True))
def test_every_buffer_written_and_the_workspace_is_the_references(reverse):
    """NaN-poisoned buffers fully written; the workspace [ĩ, f̃, z, o, c', n', m'] and the gradients (no
    peephole or projection: empty) as the reference's."""
    from fusedrnn import reference

    x, h0, c0, w, bs = op_problem(F64, 2)
    (out, h_n, c_n, ws, *grads), (g_out, g_h, g_c) = op_results(x, h0, c0, w, bs, reverse, poison=True)
    ref = reference.sequence_forward(SLSTM, x, h0, c0, w, bs, reverse)
    for name, a, b in (("out", out, ref.out), ("h_n", h_n, ref.h_n), ("c_n", c_n, ref.c_n),
                       ("workspace", ws, ref.workspace)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    want = reference.sequence_backward(SLSTM, g_out, g_h, g_c, x, h0, c0, w, bs, reverse, ref.out, ref.workspace)
    assert len(grads) == 9 and grads[7].numel() == 0 and grads[8].numel() == 0
    for name, a, b in zip(("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"), grads,
                          (want.dx, want.dh0, want.dc0, *want.dweights[:4])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_inference_keeps_no_workspace():
    x, h0, c0, w, bs = op_problem(F32, 4)
    out, h_n, c_n, ws = torch.ops.fusedrnn_C.forward("slstm", "slstm", x, h0, c0, *w[:4], None, None, bs, True, "auto",
                                                     True, for_backward=False)
    trained = torch.ops.fusedrnn_C.forward("slstm", "slstm", x, h0, c0, *w[:4], None, None, bs, True, "auto", True)
    assert ws.numel() == 0
    for a, b in zip((out, h_n, c_n), trained[:3]):
        assert torch.equal(a, b)


def test_one_kernel_whatever_the_strategy():
    """Every strategy name runs the heads' kernel (the same bits); the strategy query says so."""
    x, h0, c0, w, bs = op_problem(F32, 2, H=20, B=3)
    runs = {s: op_results(x, h0, c0, w, bs, True, s)[0] for s in ("auto", "gemm", "fused", "folded")}
    for s, res in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(res, runs["auto"])), s
    for dtype in (F32, F64):
        for query in (CPU.chosen_forward_strategy, CPU.chosen_backward_strategy):
            assert query(SLSTM, x.to(dtype), h0.to(dtype), w, 4) == "heads"


def test_half_precision_runs_in_float32():
    x, h0, c0, w, bs = op_problem(F32, 2)
    full = op_results(x, h0, c0, w, bs, False)[0]
    half = op_results(*(t.bfloat16() for t in (x, h0, c0)), LayerWeights(*(t.bfloat16() for t in w[:4])), bs, False)[0]
    assert all(t.dtype == torch.bfloat16 for t in half if t.numel() > 0)
    _, rel = ft.error(half[0], full[0])
    assert rel < 0.05


# ----------------------------------------------------------------------------
# Threads, "auto", the cell, the checker, bad calls
# ----------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", (F32, F64), ids=ft.dtype_name)
@pytest.mark.parametrize("heads, H", [(1, 132), (2, 132), (4, 68)])
def test_one_and_two_threads_give_the_same_bits(dtype, heads, H, restore_threads):
    """Large enough for a team of two (B * 4H * D >= 2^18), packed and reversed."""
    g = torch.Generator().manual_seed(7)
    B, T, I = 33, 5, 6
    lengths = torch.tensor([T] * 20 + [3] * 13)
    x = torch.randn(int(lengths.sum()), I, dtype=dtype, generator=g)
    batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)])
    h0, c, n, m = random_states(B, H, dtype=dtype, generator=g)
    w = LayerWeights(torch.randn(4 * H, I, dtype=dtype, generator=g) * 0.3,
                     torch.randn(4 * H, H // heads, dtype=dtype, generator=g) * 0.1,
                     torch.randn(4 * H, dtype=dtype, generator=g), torch.randn(4 * H, dtype=dtype, generator=g))
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs.append(op_results(x, h0, torch.cat([c, n, m], dim=1), w, batch_sizes, True)[0])
    differing = [i for i, (a, b) in enumerate(zip(*runs)) if not torch.equal(a, b)]
    assert not differing, differing


def test_auto_runs_it_on_the_cpu_backend_without_a_warning(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())
    x = torch.randn(4, 2, 3)
    w = LayerWeights(torch.randn(16, 3), torch.randn(16, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", SLSTM, x, w).name == "cpu"
        fusedrnn.SLSTM(3, 4, num_heads=2)(x)
    assert ("slstm", "slstm") in backends.declared_cells("triton")
    assert ("slstm", "slstm") not in backends.declared_cells("cuda")


def test_cell_steps_run_the_sequence_kernels():
    """The step ops' kernels take a matrix w_hh: the cpu backend gives sLSTM no step op, its cell's steps run
    as sequences of one step, with and without grad, matching the reference backend."""
    torch.manual_seed(0)
    cell = fusedrnn.SLSTMCell(5, 12, num_heads=3, backend="cpu")
    twin = fusedrnn.SLSTMCell(5, 12, num_heads=3, backend="reference")
    twin.load_state_dict(cell.state_dict())
    x = torch.randn(4, 5)
    states = random_states(4, 12, dtype=F32)
    assert CPU.step_op(SLSTM, x) is None
    with torch.no_grad():
        torch.testing.assert_close(cell(x, states), twin(x, states), rtol=1e-5, atol=1e-6)
    got, want = cell(x, states), twin(x, states)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(sum(t.sum() for t in got), list(cell.parameters()))
    for a, b in zip(grads, torch.autograd.grad(sum(t.sum() for t in want), list(twin.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_checker_passes_it_on_the_cpu_backend():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = check.main(["--backends", "cpu", "--cells", "slstm", "--quick"])
    out = printed.getvalue()
    assert status == 0 and "PASSED" in out and "grad_c0" in out and "0 skipped" in out, out


BAD_CALLS = {
    "w_hh-width": (lambda a: dict(w_hh=torch.zeros(32, 3)), "its width must divide hidden_size 8"),
    "w_hh-rows": (lambda a: dict(w_hh=torch.zeros(30, 2)), "w_hh must have 4\\*hidden_size rows"),
    "w_hh-1d": (lambda a: dict(w_hh=torch.zeros(32)), "w_hh 2-D"),
    "c0-width": (lambda a: dict(c0=a["c0"][:, :8].contiguous()), "c0 must have shape \\[3, 24\\]"),
    "c0-missing": (lambda a: dict(c0=None), "c0 is required"),
    "w_peep": (lambda a: dict(w_peep=torch.zeros(24)), "w_peep and w_proj exist only for lstm cells"),
    "mode": (lambda a: dict(mode="lstm"), "mode of an slstm cell must be 'slstm'"),
}


@pytest.mark.parametrize("change, message", BAD_CALLS.values(), ids=list(BAD_CALLS))
def test_bad_calls_raise_runtime_error(change, message):
    x, h0, c0, w, bs = op_problem(F32, 4)
    args = dict(family="slstm", mode="slstm", x=x, h0=h0, c0=c0, w_ih=w.w_ih, w_hh=w.w_hh, b_ih=w.b_ih,
                b_hh=w.b_hh, w_peep=None, w_proj=None, batch_sizes=bs, reverse=False)
    args.update(change(args))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedrnn_C.forward(**args)


def test_grad_cn_of_the_three_states_is_checked():
    x, h0, c0, w, bs = op_problem(F32, 2)
    out, h_n, c_n, ws = torch.ops.fusedrnn_C.forward("slstm", "slstm", x, h0, c0, *w[:4], None, None, bs, False)
    with pytest.raises(RuntimeError, match="grad_cn must have shape \\[3, 24\\]"):
        torch.ops.fusedrnn_C.backward("slstm", "slstm", out, h_n, h_n, x, h0, c0, *w[:4], None, None, bs, False, out, ws)


@pytest.mark.parametrize("steps", (4, 1, 0))
def test_outputs_share_no_memory_with_inputs(steps):
    """The cpu backend's fresh_outputs contract (fusedrnn/backends/cpu.py) holds for sLSTM: no output of its
    forward shares storage with an input, without steps (h_n, c_n then the initial states' values) included."""
    g = torch.Generator().manual_seed(8)
    H, B = 8, 3
    x = torch.randn(steps, B, 5, generator=g)
    h0, c, n, m = random_states(B, H, dtype=F32, generator=g)
    c0 = torch.cat([c, n, m], dim=1)
    w = LayerWeights(torch.randn(4 * H, 5, generator=g), torch.randn(4 * H, H // 2, generator=g),
                     torch.randn(4 * H, generator=g), torch.randn(4 * H, generator=g))
    inputs = [t for t in (x, h0, c0, *w[:4]) if t.numel() > 0]
    for for_backward in (True, False):
        res = CPU.forward(SLSTM, x, h0, c0, w, None, False, for_backward=for_backward)
        for name, t in zip(("out", "h_n", "c_n", "workspace"), res):
            if t is not None and t.numel() > 0:
                storage = t.untyped_storage().data_ptr()
                assert all(storage != i.untyped_storage().data_ptr() for i in inputs), (name, steps)
