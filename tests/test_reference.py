"""The reference backend against autograd, torch.nn, and loops written here from the equations."""

import dataclasses

import pytest
import torch
from torch import nn

import fusedrnn.testing as ft
from fusedrnn import reference
from fusedrnn.cells import CellSpec

#: every cell variant and layout (projection 4), at the small shape
GRID = ft.cases(shapes=[ft.SMALL_SHAPE], options=ft.LAYOUTS, projection=4)


@pytest.mark.parametrize("case", GRID, ids=str)
def test_hand_written_bptt_matches_autograd(case):
    """sequence_backward (by hand) equals autograd through sequence_forward, float64."""
    case = ft.layer_case(case)
    leaves = case.requiring_grad()
    res = reference.sequence_forward(*leaves.args())
    outs = [t for t in (res.out, res.h_n, res.c_n) if t is not None]
    grads = [g for g in case.upstream if g is not None]
    expected = torch.autograd.grad(outs, leaves.differentiable(), grads)
    with torch.no_grad():
        got = reference.sequence_backward(case.cell, *case.upstream, *case.inputs()[:3], case.weights,
                                          case.batch_sizes, case.reverse, res.out, res.workspace)
    got = [t for t in (got.dx, got.dh0, got.dc0, *got.dweights) if t is not None]
    assert len(got) == len(expected)
    for e, a in zip(expected, got):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def _torch_module(cell: CellSpec, I, H, proj, bias):
    if cell.family == "lstm":
        return nn.LSTM(I, H, bias=bias, proj_size=proj)
    if cell.family == "gru":
        return nn.GRU(I, H, bias=bias)
    return nn.RNN(I, H, nonlinearity=cell.mode, bias=bias)


TORCH_VARIANTS = [("lstm", 0), ("lstm-proj", 3), ("gru", 0), ("rnn-tanh", 0), ("rnn-relu", 0)]


@pytest.mark.parametrize("variant,proj", TORCH_VARIANTS, ids=[f"{v}-proj{p}" for v, p in TORCH_VARIANTS])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_forward_matches_torch_nn(variant, proj, packed, reverse):
    """Same numbers as torch.nn's single-direction layer on the same weights (reverse: on reversed time)."""
    T, B, I, H = 7, 5, 3, 37
    option = ft.layout_name(packed=packed, reverse=reverse)
    case = ft.layer_case(ft.Case(variant, ft.Shape(T, B, I, H), option, projection=proj or None))
    cell = case.cell
    mod = _torch_module(cell, I, H, proj, True).double()
    with torch.no_grad():
        for name, t in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), case.weights):
            getattr(mod, name).copy_(t)
        if proj:
            mod.weight_hr_l0.copy_(case.weights.w_proj)
    res = reference.sequence_forward(*case.args())
    hx = (case.h0[None], case.c0[None]) if cell.has_cell_state else case.h0[None]
    if packed:
        # torch.nn walks packed rows forward only; compare the forward direction, and for reverse
        # compare sequence by sequence on the time-reversed input
        seqs = _unpack_rows(case.x, case.batch_sizes)
        outs = _unpack_rows(res.out, case.batch_sizes)
        for b, (seq, out) in enumerate(zip(seqs, outs)):
            hb = (hx[0][:, b:b + 1], hx[1][:, b:b + 1]) if cell.has_cell_state else hx[:, b:b + 1]
            inp = seq.flip(0) if reverse else seq
            want, state = mod(inp[:, None], hb)
            want = want[:, 0].flip(0) if reverse else want[:, 0]
            torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
            h_last = state[0] if cell.has_cell_state else state
            torch.testing.assert_close(res.h_n[b], h_last[0, 0], rtol=1e-10, atol=1e-12)
            if cell.has_cell_state:
                torch.testing.assert_close(res.c_n[b], state[1][0, 0], rtol=1e-10, atol=1e-12)
    else:
        inp = case.x.flip(0) if reverse else case.x
        want, state = mod(inp, hx)
        want = want.flip(0) if reverse else want
        torch.testing.assert_close(res.out, want, rtol=1e-10, atol=1e-12)
        h_n = state[0] if cell.has_cell_state else state
        torch.testing.assert_close(res.h_n, h_n[0], rtol=1e-10, atol=1e-12)


def _unpack_rows(rows, batch_sizes):
    """Per sorted batch entry, its rows in time order (packed layout)."""
    sizes = batch_sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    return [torch.stack([rows[offsets[t] + b] for t in range(len(sizes)) if sizes[t] > b]) for b in range(sizes[0])]


# ---------------------------------------------------------------------------
# the seed's variants, against loops written here from the equations
# ---------------------------------------------------------------------------


def _peephole_lstm_loop(x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch):
    H = h.shape[1]
    outs = []
    for x_t in x:
        a = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i = torch.sigmoid(a[:, :H] + w_ch[:H] * c)
        f = torch.sigmoid(a[:, H:2 * H] + w_ch[H:2 * H] * c)
        g = torch.tanh(a[:, 2 * H:3 * H])
        c = f * c + i * g
        o = torch.sigmoid(a[:, 3 * H:] + w_ch[2 * H:] * c)
        h = o * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def _cho_gru_loop(x, h, w_ih, w_hh, b_ih, b_hh):
    H = h.shape[1]
    outs = []
    for x_t in x:
        xr, xz, xn = (x_t @ w_ih.T + b_ih).split(H, 1)
        r = torch.sigmoid(xr + h @ w_hh[:H].T + b_hh[:H])
        z = torch.sigmoid(xz + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
        n = torch.tanh(xn + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def test_peephole_lstm_matches_equations():
    case = ft.layer_case(ft.Case("lstm-peephole", ft.Shape(T=6, B=4, I=3, H=5)))
    res = reference.sequence_forward(*case.args())
    out, h, c = _peephole_lstm_loop(case.x, case.h0, case.c0, *case.weights[:5])
    torch.testing.assert_close(res.out, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.c_n, c, rtol=1e-12, atol=1e-12)


def test_reset_before_gru_matches_equations():
    case = ft.layer_case(ft.Case("gru-reset-before", ft.Shape(T=6, B=4, I=3, H=5)))
    res = reference.sequence_forward(*case.args())
    out, h = _cho_gru_loop(case.x, case.h0, *case.weights[:4])
    torch.testing.assert_close(res.out, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.h_n, h, rtol=1e-12, atol=1e-12)


def test_reset_before_differs_from_reset_after():
    """The two GRU forms are different functions (guards against a mode being ignored)."""
    a = ft.layer_case(ft.Case("gru", ft.SMALL_SHAPE))
    b = dataclasses.replace(a, cell=CellSpec("gru", "reset_before"))  # the same numbers
    ra = reference.sequence_forward(*a.args())
    rb = reference.sequence_forward(*b.args())
    assert (ra.out - rb.out).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["lstm-peephole", "gru", "gru-reset-before", "rnn-tanh"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pos", "neg"])
def test_saturated_preactivations_stay_finite(variant, sign):
    """Pre-activations of +-100 give finite outputs and gradients (float32)."""
    case = ft.layer_case(ft.Case(variant, ft.SMALL_SHAPE), torch.float32)
    cell = case.cell
    weights = case.weights._replace(w_ih=torch.full_like(case.weights.w_ih, sign * 100.0))
    x = case.x.abs()
    res = reference.sequence_forward(cell, x, case.h0, case.c0, weights)
    for t in (res.out, res.h_n, res.workspace):
        assert torch.isfinite(t).all()
    ones = [torch.ones_like(res.out), torch.ones_like(res.h_n), torch.ones_like(res.c_n) if case.c0 is not None else None]
    grads = reference.sequence_backward(cell, *ones, x, case.h0, case.c0, weights, None, False, res.out, res.workspace)
    for t in (grads.dx, grads.dh0, *grads.dweights):
        if t is not None:
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_accumulates_in_float32(dtype):
    """16-bit inputs: results in the input dtype, error no worse than rounding the float64 result."""
    case = ft.Case("lstm", ft.Shape(T=5, B=3, I=8, H=16))
    want = reference.sequence_forward(*ft.layer_case(case).args()).out
    got = reference.sequence_forward(*ft.layer_case(case, dtype).args()).out
    assert got.dtype == dtype
    # the inputs themselves were rounded to 16 bits, so allow a few ulps of the output
    eps = torch.finfo(dtype).eps
    assert (got.double() - want).abs().max() <= 8 * eps
