"""sLSTM (xLSTM's scalar-memory LSTM, FlashRNN's ``slstm``) on the reference backend.

The module, its cell and the functional form against a plain float64 loop written here from the equations
(docs/design.md section 4), independent of fusedrnn/reference.py: the recurrent weight expanded into its dense
block-diagonal matrix (torch.block_diag) rather than a batched product over heads, the clamps written as selects.
Then what only sLSTM has: heads, four states, the stabiliser (large pre-activations, the first step from zero
states, the unstabilised function it equals), FlashRNN's layout (its vanilla PyTorch forward, transcribed here),
and its arguments.
"""

from __future__ import annotations

import contextlib
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import check, functional

from new_cells import (assert_auto_falls_back_once, assert_same_values_and_gradients, direction_params,
                       gradcheck_graph_op)

pytestmark = [pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning"),
              pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
HEADS = (1, 2, 4)


# ----------------------------------------------------------------------------
# The plain loop, from the equations
# ----------------------------------------------------------------------------


def dense_recurrent(w_hh: torch.Tensor, heads: int) -> torch.Tensor:
    """The full [4H, H] matrix R whose non-zero blocks ``w_hh`` [4H, H/heads] holds: per gate, the heads' D x D
    blocks on the diagonal (row k*D + d of a gate's block is unit d of head k)."""
    gates = w_hh.chunk(4)
    return torch.cat([torch.block_diag(*gate.chunk(heads)) for gate in gates])


def at_most_one(v):
    return torch.where(v > 1, torch.ones_like(v), v)


def plain_step(x, h, state, p, heads):
    """One sLSTM step: (h', (c', n', m'))."""
    c, n, m = state
    raw = x @ p["weight_ih"].t() + h @ dense_recurrent(p["weight_hh"], heads).t()
    if p.get("bias_ih") is not None:
        raw = raw + p["bias_ih"] + p["bias_hh"]
    i_raw, f_raw, z_raw, o_raw = raw.chunk(4, dim=-1)
    log_f = m - F.softplus(-f_raw)  # log sigmoid
    m_new = torch.where(n == 0, i_raw, torch.where(i_raw > log_f, i_raw, log_f))
    i, f = at_most_one(torch.exp(i_raw - m_new)), at_most_one(torch.exp(log_f - m_new))
    c_new = f * c + i * torch.tanh(z_raw)
    n_new = f * n + i
    n_new = torch.where(n_new < 1, torch.ones_like(n_new), n_new)
    return torch.sigmoid(o_raw) * c_new / n_new, (c_new, n_new, m_new)


def plain_loop(x, h, state, p, heads, masks=None):
    """One layer-direction; with ``masks`` [T, B, H], haste's zoneout of h (1: the new value; c, n, m as computed)."""
    outs = []
    for t in range(x.shape[0]):
        h_prev = h
        h, state = plain_step(x[t], h, state, p, heads)
        if masks is not None:
            h = torch.where(masks[t] == 1, h, h_prev)
        outs.append(h)
    return torch.stack(outs), h, state


def plain_stack(module, x, states=None):
    """What ``module`` computes for time-major ``x`` [T, B, I]: (out, h_n, c_n, n_n, m_n)."""
    directions = 2 if module.bidirectional else 1
    if states is None:
        states = (x.new_zeros(module.num_layers * directions, x.shape[1], module.hidden_size),) * 4
    layer_input, finals = x, []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            seq = layer_input.flip(0) if d else layer_input
            out, h, state = plain_loop(seq, states[0][index], tuple(s[index] for s in states[1:]),
                                       direction_params(module, layer, d), module.num_heads)
            outputs.append(out.flip(0) if d else out)
            finals.append((h, *state))
        layer_input = torch.cat(outputs, dim=-1)
    return (layer_input, *(torch.stack(s) for s in zip(*finals)))


def random_states(*shape, dtype=F64):
    """Initial (h, c, n, m) where the cell's own steps take them: n >= 1, |c| <= n."""
    h, c, m = (torch.randn(*shape, dtype=dtype) for _ in range(3))
    n = 1 + torch.rand(*shape, dtype=dtype) * 3
    return tuple(s.requires_grad_() for s in (h, c.clamp(-1, 1) * n, n, m))


# ----------------------------------------------------------------------------
# The module against the plain loop
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("heads", HEADS)
def test_batch_first_with_initial_states(heads):
    rnn = fusedrnn.SLSTM(3, 8, dtype=F64, batch_first=True, num_heads=heads)
    x = torch.randn(2, 6, 3, dtype=F64, requires_grad=True)
    states = random_states(1, 2, 8)
    out, finals = rnn(x, states)
    assert len(finals) == 4
    expected_out, *expected = plain_stack(rnn, x.transpose(0, 1), states)
    assert_same_values_and_gradients((out, *finals), (expected_out.transpose(0, 1), *expected),
                                     [x, *states, *rnn.parameters()])


@pytest.mark.parametrize("heads", HEADS)
def test_packed_unsorted_bidirectional_two_layers_with_states(heads):
    """Each sequence of a packed batch (unsorted lengths, states permuted with them) as if run alone."""
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64, num_heads=heads)
    x = torch.randn(5, 3, 3, dtype=F64, requires_grad=True)
    lengths = torch.tensor([2, 5, 4])
    states = random_states(4, 3, 4)
    out, finals = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), states)
    padded, _ = pad_packed_sequence(out)
    mine, theirs = [], []
    for b, n in enumerate(lengths.tolist()):
        alone = plain_stack(rnn, x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in states))
        mine += [padded[:n, b:b + 1], *(s[:, b:b + 1] for s in finals)]
        theirs += list(alone)
    assert_same_values_and_gradients(mine, theirs, [x, *states, *rnn.parameters()])


def test_unbatched_without_bias_or_states():
    rnn = fusedrnn.SLSTM(3, 4, bias=False, dtype=F64, num_heads=2)
    assert [n for n, _ in rnn.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    out, finals = rnn(x)
    assert out.shape == (5, 4) and all(s.shape == (1, 4) for s in finals)
    expected_out, *expected = plain_stack(rnn, x.unsqueeze(1))
    assert_same_values_and_gradients((out, *finals), (expected_out.squeeze(1), *(s.squeeze(1) for s in expected)),
                                     [x, *rnn.parameters()])
    # unbatched states in, as torch.nn.LSTM takes them
    states = tuple(s.detach() for s in finals)
    again = rnn(x.detach(), states)
    torch.testing.assert_close(again[0], plain_stack(rnn, x.detach().unsqueeze(1),
                                                     tuple(s.unsqueeze(1) for s in states))[0].squeeze(1))


@pytest.mark.parametrize("heads", HEADS)
def test_float32_within_the_documented_tolerance(heads):
    """float32 against the plain loop in float64 on the same (rounded) values: rel <= 1e-5."""
    rnn = fusedrnn.SLSTM(8, 16, num_layers=2, bidirectional=True, num_heads=heads)
    x = torch.randn(20, 4, 8)
    with torch.no_grad():
        out, finals = rnn(x)
    rnn64 = fusedrnn.SLSTM(8, 16, num_layers=2, bidirectional=True, num_heads=heads, dtype=F64)
    rnn64.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        expected = plain_stack(rnn64, x.double())
    for mine, theirs in zip((out, *finals), expected):
        assert ft.error(mine.double(), theirs)[1] <= 1e-5


def test_zero_initial_states_are_none():
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    zeros = tuple(torch.zeros(2, 2, 4, dtype=F64) for _ in range(4))
    for a, b in zip((rnn(x)[0], *rnn(x)[1]), (rnn(x, zeros)[0], *rnn(x, zeros)[1])):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("heads", (1, 2))
def test_gradcheck_of_the_module(heads):
    rnn = fusedrnn.SLSTM(2, 4, num_layers=2, bidirectional=True, dtype=F64, num_heads=heads)
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    states = random_states(4, 2, 4)
    params = list(rnn.parameters())
    names = [n for n, _ in rnn.named_parameters()]

    def run(x, *leaves):
        with torch.nn.utils.stateless._reparametrize_module(rnn, dict(zip(names, leaves[4:]))):
            out, finals = rnn(x, leaves[:4])
        return (out, *finals)

    assert torch.autograd.gradcheck(run, (x, *states, *params))


def test_gradcheck_of_the_functional_form_from_zero_states():
    """slstm_layer without states: the first step's m' = ĩ (n = 0) differentiated too."""
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    weights = [torch.randn(16, 3, dtype=F64, requires_grad=True), torch.randn(16, 2, dtype=F64, requires_grad=True),
               torch.randn(16, dtype=F64, requires_grad=True), torch.randn(16, dtype=F64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: functional.slstm_layer(a[0], None, None, None, None, *a[1:]),
                                    (x, *weights))


def test_gradcheck_through_the_op():
    """The family's graph op (defined from Python) and its autograd formula."""
    gradcheck_graph_op("slstm")


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("option", ("padded", "packed-reverse"))
def test_the_hand_written_backward_is_autograds(heads, option):
    """reference.sequence_backward (by hand) against autograd through the forward, float64, every input's gradient
    from upstream gradients of out, h_n and the cell state (c, n, m), from states where: n is 0 (a first step)
    with m large, so that f's clamp binds; n is 0 with m small; n >= 1 (a later step)."""
    case = ft.layer_case(ft.Case("slstm", ft.Shape(T=4, B=6, I=3, H=8), option))
    H = 8
    c, n, m = case.c0.chunk(3, dim=1)
    n = torch.where(torch.arange(6)[:, None] < 4, torch.zeros_like(n), 1 + n.abs())
    m = torch.where(torch.arange(6)[:, None] < 2, 50 + m, m)
    c0 = torch.cat([c, n, m], dim=1)
    w_hh = torch.randn(4 * H, H // heads, dtype=F64) / (H // heads) ** 0.5
    weights = case.weights._replace(w_hh=w_hh)
    tensors = (case.x, case.h0, c0, *weights)
    from fusedrnn import reference

    fwd = reference.sequence_forward(case.cell, case.x, case.h0, c0, weights, case.batch_sizes, case.reverse)
    by_hand = reference.sequence_backward(case.cell, *case.upstream, case.x, case.h0, c0, weights, case.batch_sizes,
                                          case.reverse, fwd.out, fwd.workspace)
    by_autograd = reference.autograd_backward(case.cell, tensors, case.batch_sizes, case.reverse, case.upstream)
    mine = [by_hand.dx, by_hand.dh0, by_hand.dc0, *by_hand.dweights]
    for name, a, b in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"), mine, by_autograd):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


# ----------------------------------------------------------------------------
# The cell and the functional form
# ----------------------------------------------------------------------------


def test_the_cell_is_one_step_of_the_layer():
    rnn = fusedrnn.SLSTM(3, 4, dtype=F64, num_heads=2)
    cell = fusedrnn.SLSTMCell(3, 4, dtype=F64, num_heads=2)
    assert [n + "_l0" for n, _ in cell.named_parameters()] == [n for n, _ in rnn.named_parameters()]
    cell.load_state_dict({n[: -len("_l0")]: p for n, p in rnn.state_dict().items()})
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    states = random_states(2, 4)
    out, finals = rnn(x, tuple(s[None] for s in states))
    # the cell on the layer's own parameters, so that both differentiate the same leaves
    shared = {n[: -len("_l0")]: p for n, p in rnn.named_parameters()}
    step_states, outs = states, []
    for t in range(5):
        step_states = torch.func.functional_call(cell, shared, (x[t], step_states))
        outs.append(step_states[0])
    assert_same_values_and_gradients((torch.stack(outs), *step_states), (out, *(s[0] for s in finals)),
                                     [x, *states, *rnn.parameters()])
    # unbatched, no state: the first step from zeros
    one = cell(x[0, 0].detach())
    expected = plain_step(x[0, :1].detach(), *(torch.zeros(1, 4, dtype=F64),), (torch.zeros(1, 4, dtype=F64),) * 3,
                          dict(cell.named_parameters()), 2)
    for a, b in zip(one, (expected[0], *expected[1])):
        torch.testing.assert_close(a, b[0], rtol=1e-12, atol=1e-12)


def test_cell_steps_chained_gradcheck():
    cell = fusedrnn.SLSTMCell(2, 4, dtype=F64, num_heads=2)
    xs = [torch.randn(3, 2, dtype=F64, requires_grad=True) for _ in range(2)]

    def two_steps(x0, x1):
        first = cell(x0)
        return (*first, *cell(x1, first))

    assert torch.autograd.gradcheck(two_steps, xs)


def test_the_functional_form_is_the_layer():
    rnn = fusedrnn.SLSTM(3, 8, dtype=F64, num_heads=4)
    x = torch.randn(4, 2, 3, dtype=F64)
    states = tuple(s.detach() for s in random_states(1, 2, 8))
    out, finals = rnn(x, states)
    res = functional.slstm_layer(x, *(s[0] for s in states), rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                                 rnn.bias_hh_l0)
    assert len(res) == 5
    for a, b in zip(res, (out, *(s[0] for s in finals))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the generic layer takes c, n, m as one cell state, 3H wide
    generic = functional.layer(rnn.cell, x, states[0][0], torch.cat([s[0] for s in states[1:]], -1),
                               rnn._direction_weights(0, 0, None))
    torch.testing.assert_close(generic.c_n, torch.cat([s[0] for s in finals[1:]], -1), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# Heads and the stabiliser
# ----------------------------------------------------------------------------


def test_a_head_reads_only_its_own_slice_of_h():
    """With two heads, changing head 0's units of h_0 changes no unit of head 1 at the first step."""
    cell = fusedrnn.SLSTMCell(3, 6, dtype=F64, num_heads=2)
    x = torch.randn(4, 3, dtype=F64)
    states = [s.detach() for s in random_states(4, 6)]
    first = cell(x, tuple(states))
    states[0] = states[0].clone()
    states[0][:, :3] += 1.0
    second = cell(x, tuple(states))
    for a, b in zip(first, second):
        assert torch.equal(a[:, 3:], b[:, 3:])
        assert not torch.equal(a[:, :3], b[:, :3])
    assert cell.weight_hh.shape == (24, 3)


def test_the_first_step_from_zero_states():
    """n = 0: m' = ĩ, so i = 1, n' = 1, c' = tanh(z̃) and h' = σ(õ) tanh(z̃), whatever f̃."""
    cell = fusedrnn.SLSTMCell(3, 4, dtype=F64)
    x = torch.randn(5, 3, dtype=F64) * 10
    h, c, n, m = cell(x)
    i_raw, f_raw, z_raw, o_raw = (x @ cell.weight_ih.t() + cell.bias_ih + cell.bias_hh).chunk(4, -1)
    assert torch.equal(n, torch.ones_like(n))
    torch.testing.assert_close(m, i_raw, rtol=0, atol=0)
    torch.testing.assert_close(c, torch.tanh(z_raw), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(h, torch.sigmoid(o_raw) * torch.tanh(z_raw), rtol=1e-15, atol=1e-15)


def unstabilised(module, x):
    """h of a one-layer module as the paper writes the cell before stabilising it: C' = F C + I z,
    N' = F N + I with I = exp(ĩ), F = σ(f̃), h' = σ(õ) C'/N' (float64; finite for moderate pre-activations)."""
    p = direction_params(module, 0, 0)
    R = dense_recurrent(p["weight_hh"], module.num_heads)
    h = C = N = x.new_zeros(x.shape[1], module.hidden_size)
    outs = []
    for t in range(x.shape[0]):
        i_raw, f_raw, z_raw, o_raw = (x[t] @ p["weight_ih"].t() + h @ R.t() + p["bias_ih"] + p["bias_hh"]).chunk(4, -1)
        C = torch.sigmoid(f_raw) * C + torch.exp(i_raw) * torch.tanh(z_raw)
        N = torch.sigmoid(f_raw) * N + torch.exp(i_raw)
        h = torch.sigmoid(o_raw) * C / N
        outs.append(h)
    return torch.stack(outs)


def test_a_row_does_not_depend_on_its_batch():
    """The first-step rule (m' = ĩ where n = 0) is decided unit by unit, as FlashRNN's kernels decide it (its vanilla
    form asks whether n is zero in the whole batch): a row starting from zero states beside rows that do not, and a
    row of NaNs, leave each other's results as they are alone."""
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2, dtype=F64, num_heads=2)
    x = torch.randn(5, 3, 3, dtype=F64)
    x[:, 2] = float("nan")
    states = [s.detach() for s in random_states(2, 3, 4)]
    for s in states:
        s[:, 0] = 0  # row 0 starts from zero states, row 1 from later ones
    out, finals = rnn(x, tuple(states))
    for b in range(3):
        alone_out, alone_finals = rnn(x[:, b:b + 1], tuple(s[:, b:b + 1] for s in states))
        for a, e in zip((out, *finals), (alone_out, *alone_finals)):
            torch.testing.assert_close(a[:, b:b + 1], e, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isnan(out[:, 2]).all() and torch.isfinite(out[:, :2]).all()


def test_zoneout_of_h_with_a_mask():
    """haste's zoneout, a layer's option: h mixed with its previous value by the mask, c, n and m not."""
    rnn = fusedrnn.SLSTM(3, 4, dtype=F64, num_heads=2)
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
    states = random_states(2, 4)
    masks = torch.bernoulli(torch.full((6, 2, 4), 0.7, dtype=F64))
    res = functional.slstm_layer(x, *states, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0,
                                 zoneout=0.3, zoneout_mask=masks)
    out, h, state = plain_loop(x, states[0], states[1:], direction_params(rnn, 0, 0), 2, masks)
    assert_same_values_and_gradients(res, (out, h, *state), [x, *states, *rnn.parameters()])


def test_export():
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2, num_heads=2)
    x = torch.randn(5, 2, 3)
    rnn(x)  # the backends imported eagerly, as a model is run before it is exported
    program = torch.export.export(rnn, (x,))
    assert "fusedrnn.slstm_forward.default" in {str(node.target) for node in program.graph.nodes}
    mine, theirs = program.module()(x), rnn(x)
    for a, b in zip((mine[0], *mine[1]), (theirs[0], *theirs[1])):
        torch.testing.assert_close(a, b)


def test_the_stabiliser_leaves_the_function_unchanged():
    rnn = fusedrnn.SLSTM(3, 8, dtype=F64, num_heads=2)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(5)
    x = torch.randn(12, 3, 3, dtype=F64)
    torch.testing.assert_close(rnn(x)[0], unstabilised(rnn, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads", (1, 4))
def test_large_preactivations_stay_finite_and_match_float64(heads):
    """Weights x50 and the input gates' biases raised by 200: exp(ĩ) overflows float32 (and the unstabilised formula
    with it); the stabilised cell's outputs stay finite and match the plain loop in float64, the states too: the
    module in float64 to 1e-8, in float32 to 1e-3 (pre-activations and m of a few hundred carry the rounding of
    their dtype times ~1e3, which the exponents pass on: the function's conditioning at this scale, ~1e-12 and
    ~1e-5 from one step, which ten steps of two layers add to)."""
    rnn = fusedrnn.SLSTM(4, 8, num_layers=2, num_heads=heads)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(50)
        for layer in range(2):
            getattr(rnn, f"bias_ih_l{layer}")[:8] += 200
    x = torch.randn(10, 3, 4)
    with torch.no_grad():
        out, finals = rnn(x)
        assert not torch.isfinite(unstabilised(rnn, x)).all()  # the pre-activations are large indeed
        rnn64 = fusedrnn.SLSTM(4, 8, num_layers=2, num_heads=heads, dtype=F64)
        rnn64.load_state_dict(rnn.state_dict())
        expected = plain_stack(rnn64, x.double())
        out64, finals64 = rnn64(x.double())
    for mine, mine64, theirs in zip((out, *finals), (out64, *finals64), expected):
        assert torch.isfinite(mine).all()
        assert ft.error(mine64, theirs)[1] <= 1e-8
        assert ft.error(mine.double(), theirs)[1] <= 1e-3
    # and the gradients are finite
    rnn.zero_grad()
    out, finals = rnn(x.requires_grad_())
    (out.sum() + sum(s.sum() for s in finals)).backward()
    assert all(torch.isfinite(p.grad).all() for p in rnn.parameters()) and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------
# FlashRNN's layout
# ----------------------------------------------------------------------------


def flashrnn_vanilla(Wx, R, b):
    """FlashRNN's vanilla PyTorch sLSTM (flashrnn/vanilla/__init__.py flashrnn_forward and vanilla/slstm.py),
    transcribed: ``Wx`` [T, B, 4, NH, D], ``R`` [4, NH, D, D] in its default "GHDP" layout (permuted by its letters
    to the "HPGD" the vanilla backend takes), ``b`` [4, NH, D], zero initial states; returns the states
    [T, 4, B, NH*D] (h, c, n, m)."""
    T, B, G, NH, D = Wx.shape
    R = R.permute(1, 3, 0, 2).reshape(1, NH, D, G * D)  # "GHDP" -> "HPGD"
    states = Wx.new_zeros(B, 4, NH, D)
    out = []
    for t in range(T):
        Ry = states[:, 0].reshape(B, NH, 1, -1).matmul(R).reshape(B, NH, G, D).transpose(1, 2)
        raw = Wx[t] + Ry + b
        y, c, n, m = torch.unbind(states, dim=1)
        iraw, fraw, zraw, oraw = torch.unbind(raw, dim=1)
        logfplusm = F.logsigmoid(fraw) + m
        mnew = iraw if torch.all(n == 0.0) else torch.max(iraw, logfplusm)
        igate, fgate = torch.exp(iraw - mnew), torch.exp(logfplusm - mnew)
        cnew = fgate * c + igate * torch.tanh(zraw)
        nnew = torch.maximum(fgate * n + igate, torch.ones_like(n))
        states = torch.stack((torch.sigmoid(oraw) * cnew / nnew, cnew, nnew, mnew), dim=1)
        out.append(states.reshape(B, 4, NH * D).transpose(0, 1))
    return torch.stack(out)


@pytest.mark.parametrize("heads", HEADS)
def test_loads_flashrnns_tensors_and_computes_its_function(heads):
    H, I = 8, 3
    D = H // heads
    W, R, b = torch.randn(4 * H, I, dtype=F64), torch.randn(4, heads, D, D, dtype=F64) / D ** 0.5, \
        torch.randn(4, heads, D, dtype=F64)
    rnn = fusedrnn.SLSTM(I, H, dtype=F64, num_heads=heads)
    rnn.load_flashrnn_state_dict({"W": W, "R": R, "b": b})
    x = torch.randn(6, 2, I, dtype=F64)
    expected = flashrnn_vanilla((x @ W.t()).reshape(6, 2, 4, heads, D), R, b)
    out, finals = rnn(x)
    torch.testing.assert_close(out, expected[:, 0], rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(finals, expected[-1]):
        torch.testing.assert_close(mine[0], theirs, rtol=1e-12, atol=1e-12)
    # and back: the same tensors (b as the sum of the two biases)
    back = rnn.flashrnn_state_dict()
    for name, t in (("W", W), ("R", R), ("b", b)):
        torch.testing.assert_close(back[name], t, rtol=0, atol=0)
    assert torch.equal(rnn.bias_hh_l0, torch.zeros_like(rnn.bias_hh_l0))


def test_flashrnns_other_layouts_and_a_layer_direction():
    """FlashRNNConfig's other recurrent_shape / bias_shape strings are permutations by letter; a layer-direction
    other than the first one takes them too."""
    heads, D = 2, 3
    R, b = torch.randn(4, heads, D, D, dtype=F64), torch.randn(4, heads, D, dtype=F64)
    rnn = fusedrnn.SLSTM(2, 6, num_layers=2, bidirectional=True, dtype=F64, num_heads=heads)
    rnn.load_flashrnn_state_dict({"R": R.permute(1, 3, 0, 2), "b": b.permute(1, 2, 0)}, 1, True,
                                 recurrent_shape="HPGD", bias_shape="HDG")
    back = rnn.flashrnn_state_dict(1, True)
    assert torch.equal(back["R"], R) and torch.equal(back["b"], b)
    assert torch.equal(rnn.weight_hh_l1_reverse.reshape(4, heads, D, D), R)


def test_flashrnn_loader_refuses_what_does_not_fit():
    rnn = fusedrnn.SLSTM(2, 6, num_heads=2)
    with pytest.raises(ValueError, match="R in layout GHDP must have shape \\[4, 2, 3, 3\\]"):
        rnn.load_flashrnn_state_dict({"R": torch.zeros(4, 3, 2, 2), "b": torch.zeros(4, 2, 3)})
    with pytest.raises(ValueError, match="layout 'GHD' must order the letters of 'GHDP'"):
        rnn.load_flashrnn_state_dict({"R": torch.zeros(4, 2, 3, 3), "b": torch.zeros(4, 2, 3)}, recurrent_shape="GHD")
    with pytest.raises(ValueError, match="no layer-direction 'l1'"):
        rnn.load_flashrnn_state_dict({"R": torch.zeros(4, 2, 3, 3), "b": torch.zeros(4, 2, 3)}, 1)
    with pytest.raises(ValueError, match="bias=False"):
        fusedrnn.SLSTM(2, 6, bias=False).load_flashrnn_state_dict({"R": torch.zeros(4, 1, 6, 6),
                                                                    "b": torch.ones(4, 1, 6)})


# ----------------------------------------------------------------------------
# Layout, arguments, the library's machinery
# ----------------------------------------------------------------------------


def test_layout_state_dict_and_repr():
    rnn = fusedrnn.SLSTM(3, 8, num_layers=2, bidirectional=True, num_heads=4)
    shapes = {n: tuple(p.shape) for n, p in rnn.state_dict().items()}
    assert shapes == {f"{name}_l{k}{suffix}": shape
                      for k, inputs in ((0, 3), (1, 16)) for suffix in ("", "_reverse")
                      for name, shape in (("weight_ih", (32, inputs)), ("weight_hh", (32, 2)),
                                          ("bias_ih", (32,)), ("bias_hh", (32,)))}
    assert repr(rnn) == "SLSTM(3, 8, num_layers=2, bidirectional=True, num_heads=4)"
    assert repr(fusedrnn.SLSTMCell(3, 8, num_heads=2)) == "SLSTMCell(3, 8, num_heads=2)"
    twin = pickle.loads(pickle.dumps(rnn))
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(twin(x)[0], rnn(x)[0], rtol=0, atol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        fusedrnn.SLSTM(3, 6, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        fusedrnn.SLSTMCell(3, 6, num_heads=0)
    with pytest.raises(TypeError, match="num_heads"):
        fusedrnn.SLSTM(3, 6, num_heads=2.0)
    with pytest.raises(ValueError, match="num_heads exists only for cells with heads"):
        fusedrnn.Recurrent("lstm", 3, 6, num_heads=2)
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    good = [torch.zeros(2, 2, 4) for _ in range(4)]
    for index in range(4):  # each state's shape, named by its index as torch.nn names hidden[0], hidden[1]
        states = list(good)
        states[index] = torch.zeros(2, 2, 5)
        with pytest.raises(RuntimeError, match=f"Expected hidden\\[{index}\\] size \\(2, 2, 4\\)"):
            rnn(x, tuple(states))
    with pytest.raises(RuntimeError, match="expects four hidden states"):
        rnn(x, (*good, good[0]))
    with pytest.raises(IndexError, match="\\(h_0, c_0, n_0, m_0\\) of four tensors"):
        rnn(x, tuple(good[:2]))
    with pytest.raises(RuntimeError, match="hx, cx, nx and mx should also be 3-D"):
        rnn(x, tuple(s[0] for s in good))
    with pytest.raises(RuntimeError, match="nx dtype"):
        rnn(x, (good[0], good[1], good[2].double(), good[3]))
    cell = fusedrnn.SLSTMCell(3, 4)
    with pytest.raises(RuntimeError, match="expects four hidden states"):
        cell(x[0], tuple(s[0] for s in good[:2]))
    with pytest.raises(RuntimeError, match="hidden2 has inconsistent hidden_size"):
        cell(x[0], (good[0][0], good[1][0], torch.zeros(2, 5), good[3][0]))
    # the functional form: a w_hh whose width does not divide H, a partial state
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 3)
    with pytest.raises(ValueError, match="does not divide H=4"):
        functional.slstm_layer(x, None, None, None, None, w_ih, w_hh)
    with pytest.raises(ValueError, match="given together"):
        functional.slstm_layer(x, None, torch.zeros(2, 4), None, None, w_ih, torch.randn(16, 2))
    with pytest.raises(RuntimeError, match="c0 must have shape \\[2, 12\\]"):
        functional.layer(rnn.cell, x, None, torch.zeros(2, 4), rnn._direction_weights(0, 0, None))


def test_empty_sizes():
    """An empty batch (the module), no hidden unit (the functional form): torch.nn's shapes, zero gradients."""
    rnn = fusedrnn.SLSTM(4, 6, num_layers=2, num_heads=3)
    x = torch.randn(3, 0, 4, requires_grad=True)
    out, finals = rnn(x)
    assert out.shape == (3, 0, 6) and all(s.shape == (2, 0, 6) for s in finals)
    out.sum().backward()
    assert x.grad.shape == x.shape
    x = torch.randn(3, 2, 4, requires_grad=True)
    w_hh = torch.zeros(0, 0, requires_grad=True)
    res = functional.slstm_layer(x, None, None, None, None, torch.zeros(0, 4), w_hh)
    assert [tuple(t.shape) for t in res] == [(3, 2, 0)] + [(2, 0)] * 4
    torch.autograd.backward(res[0].sum() + res[4].sum(), inputs=[x, w_hh])
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_auto_falls_back_once_with_a_warning(monkeypatch):
    """A backend without sLSTM's kernels (here the cpu backend with sLSTM taken off its cells, as before it had
    them; with them "auto" runs its kernels: tests/test_slstm_cpu.py): "auto" sends CPU tensors to the
    reference backend, once with a warning, and the backend named refuses the call."""
    from fusedrnn import backends
    from fusedrnn.backends.cpu import CpuBackend

    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(CpuBackend, "cells", CpuBackend.cells - {("slstm", "slstm")})
    assert_auto_falls_back_once(fusedrnn.SLSTM(3, 4), torch.randn(4, 2, 3))
    if "cpu" in backends.available():
        with pytest.raises(RuntimeError, match="'cpu' cannot run this call: it has no kernels for the slstm"):
            fusedrnn.SLSTM(3, 4, backend="cpu")(torch.randn(4, 2, 3))


def test_compile_fullgraph_with_auto():
    rnn = fusedrnn.SLSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, num_heads=2)
    x = torch.randn(2, 5, 3, requires_grad=True)
    expected_out, expected_states = rnn(x)
    torch._dynamo.reset()
    out, states = torch.compile(rnn, fullgraph=True, backend="aot_eager")(x)
    leaves = [x, *rnn.parameters()]
    mine = torch.autograd.grad(out.sin().sum() + sum(s.cos().sum() for s in states), leaves)
    theirs = torch.autograd.grad(expected_out.sin().sum() + sum(s.cos().sum() for s in expected_states), leaves)
    for a, b in zip((out, *states, *mine), (expected_out, *expected_states, *theirs)):
        torch.testing.assert_close(a, b)


def test_the_checker_passes_it_on_the_reference_backend():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = check.main(["--backends", "reference", "--cells", "slstm", "--quick"])
    assert status == 0 and "PASSED" in printed.getvalue() and "grad_c0" in printed.getvalue(), printed.getvalue()


@pytest.mark.parametrize("kind", ["module", "cell"])
def test_returned_states_may_be_edited_in_place(kind):
    """torch.nn lets a caller edit its RNN's outputs in place (``c_n.mul_(2)``); the states split off the layers'
    joined cell state must allow it too, with the gradients of the out-of-place edit (found by the fuzz grid:
    they were views of one ``chunk``, which autograd refuses to edit)."""
    torch.manual_seed(0)
    module = fusedrnn.SLSTM(3, 4, num_heads=2) if kind == "module" else fusedrnn.SLSTMCell(3, 4, num_heads=2)
    x = torch.randn(5, 2, 3) if kind == "module" else torch.randn(2, 3)

    def run(in_place):
        module.zero_grad()
        out = module(x)
        states = out[1] if kind == "module" else out
        edited = [s.mul_(2) if in_place else s * 2 for s in states]
        sum((e * (i + 1)).sum() for i, e in enumerate(edited)).backward()
        return [e.detach().clone() for e in edited], [p.grad.clone() for p in module.parameters()]

    for a, b in zip(*(sum(run(flag), []) for flag in (True, False))):
        torch.testing.assert_close(a, b)
