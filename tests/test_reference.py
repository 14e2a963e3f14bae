"""The reference backend against autograd, torch.nn, and loops written here from the equations."""

import pytest
import torch
from torch import nn

from fusedrnn import reference
from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellSpec

from layer_cases import case_id, make_case, option_grid

GRID = option_grid()


@pytest.mark.parametrize("cell,options", GRID, ids=[case_id(c, o) for c, o in GRID])
def test_hand_written_bptt_matches_autograd(cell, options):
    """sequence_backward (by hand) equals autograd through sequence_forward, float64."""
    case = make_case(cell, **options)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in case.inputs()]
    x, h0, c0, *w = leaves
    res = reference.sequence_forward(cell, x, h0, c0, LayerWeights(*w), case.batch_sizes, case.reverse)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (res.out, res.h_n, res.c_n) if t is not None]
    outs = [t for t in (res.out, res.h_n, res.c_n) if t is not None]
    present = [t for t in leaves if t is not None]
    expected = torch.autograd.grad(outs, present, grads)
    with torch.no_grad():
        got = reference.sequence_backward(
            cell, grads[0], grads[1], grads[2] if cell.has_cell_state else None,
            *case.inputs()[:3], case.weights, case.batch_sizes, case.reverse, res.out, res.workspace,
        )
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


TORCH_CELLS = [CellSpec("lstm", "lstm"), CellSpec("gru", "reset_after"), CellSpec("rnn", "tanh"), CellSpec("rnn", "relu")]


TORCH_CASES = [(c, p) for c in TORCH_CELLS for p in ((0, 3) if c.family == "lstm" else (0,))]


@pytest.mark.parametrize("cell,proj", TORCH_CASES, ids=[f"{c}-proj{p}" for c, p in TORCH_CASES])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_forward_matches_torch_nn(cell, proj, packed, reverse):
    """Same numbers as torch.nn's single-direction layer on the same weights (reverse: on reversed time)."""
    T, B, I, H = 7, 5, 3, 37
    case = make_case(cell, T=T, B=B, I=I, H=H, proj=proj, packed=packed, reverse=reverse)
    mod = _torch_module(cell, I, H, proj, True).double()
    with torch.no_grad():
        for name, t in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), case.weights):
            getattr(mod, name).copy_(t)
        if proj:
            mod.weight_hr_l0.copy_(case.weights.w_proj)
    res = reference.sequence_forward(cell, *case.inputs()[:3], case.weights, case.batch_sizes, reverse)
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
    case = make_case(CellSpec("lstm", "lstm"), T=6, B=4, I=3, H=5, peephole=True)
    res = reference.sequence_forward(case.cell, *case.inputs()[:3], case.weights)
    out, h, c = _peephole_lstm_loop(case.x, case.h0, case.c0, *case.weights[:5])
    torch.testing.assert_close(res.out, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.c_n, c, rtol=1e-12, atol=1e-12)


def test_reset_before_gru_matches_equations():
    case = make_case(CellSpec("gru", "reset_before"), T=6, B=4, I=3, H=5)
    res = reference.sequence_forward(case.cell, *case.inputs()[:3], case.weights)
    out, h = _cho_gru_loop(case.x, case.h0, *case.weights[:4])
    torch.testing.assert_close(res.out, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.h_n, h, rtol=1e-12, atol=1e-12)


def test_reset_before_differs_from_reset_after():
    """The two GRU forms are different functions (guards against a mode being ignored)."""
    a = make_case(CellSpec("gru", "reset_after"))
    b = make_case(CellSpec("gru", "reset_before"))
    ra = reference.sequence_forward(a.cell, *a.inputs()[:3], a.weights)
    rb = reference.sequence_forward(b.cell, *b.inputs()[:3], b.weights)
    assert (ra.out - rb.out).abs().max() > 1e-3


@pytest.mark.parametrize("cell", [CellSpec("lstm", "lstm"), CellSpec("gru", "reset_after"),
                                  CellSpec("gru", "reset_before"), CellSpec("rnn", "tanh")], ids=str)
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pos", "neg"])
def test_saturated_preactivations_stay_finite(cell, sign):
    """Pre-activations of +-100 give finite outputs and gradients (float32)."""
    case = make_case(cell, dtype=torch.float32, peephole=cell.family == "lstm")
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
    cell = CellSpec("lstm", "lstm")
    case64 = make_case(cell, T=5, B=3, I=8, H=16)
    case16 = make_case(cell, T=5, B=3, I=8, H=16, dtype=dtype)
    want = reference.sequence_forward(cell, *case64.inputs()[:3], case64.weights).out
    got = reference.sequence_forward(cell, *case16.inputs()[:3], case16.weights).out
    assert got.dtype == dtype
    # the inputs themselves were rounded to 16 bits, so allow a few ulps of the output
    eps = torch.finfo(dtype).eps
    assert (got.double() - want).abs().max() <= 8 * eps
