"""Adding a cell is one record in the cell table and its reference step (docs/design.md section 11).

A "leaky" Elman cell, ``h' = (1 - a) h + a tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`` with a = 1/2,
is registered from this file only, with no edit to the library: it must then run through the
drop-in module, the cell module, the functional form and the ops, on the reference backend (the
other backends have no kernels for it, so "auto" falls back with its warning), with gradients that
autograd through a plain loop of the step agrees with, and pass fusedrnn.check's comparison."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, cells, reference
from fusedrnn.cells import CellRecord, CellSpec

LEAK = 0.5
# auto's fallback warning for the cell is asserted once (test_the_drop_in_module_runs_it_...); elsewhere expected
pytestmark = pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning")


def leaky_step(xp, h, c, w):
    """The toy cell's definition: (h', no cell state, no workspace)."""
    a = xp + h @ w.w_hh.t() + (w.b_hh if w.b_hh is not None else 0)
    return (1 - LEAK) * h + LEAK * torch.tanh(a), None, xp.new_empty((xp.shape[0], 0))


@pytest.fixture
def leaky():
    """The cell registered for one test, and everything it added removed after."""
    cells.register(CellRecord("rnn", "leaky", gates=("a",), workspace=(), torch_mode="RNN_TANH",
                              torch_computes=False))
    reference.register_step("rnn", "leaky", leaky_step)
    ft.VARIANTS["rnn-leaky"] = ft.Variant("rnn-leaky", CellSpec("rnn", "leaky"))
    try:
        yield CellSpec("rnn", "leaky")
    finally:
        del ft.VARIANTS["rnn-leaky"]
        del reference._STEPS[("rnn", "leaky")]
        del cells.CELLS[("rnn", "leaky")]


def loop(x, h0, w_ih, w_hh, b_ih, b_hh):
    """The toy cell over a padded sequence, step by step in plain PyTorch (the test's own oracle)."""
    h, outs = h0, []
    for t in range(x.shape[0]):
        a = x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
        h = (1 - LEAK) * h + LEAK * torch.tanh(a)
        outs.append(h)
    return torch.stack(outs), h


def test_the_drop_in_module_runs_it_on_the_reference_backend_with_a_warning(leaky, monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    torch.manual_seed(0)
    rnn = fusedrnn.RNN(3, 5, nonlinearity="leaky", dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, h_n = rnn(x)
    if "cpu" in backends.available():
        assert any("no kernels for the rnn[leaky] cell" in str(w.message) for w in caught)
    expected, expected_h = loop(x, torch.zeros(2, 5, dtype=torch.float64), rnn.weight_ih_l0, rnn.weight_hh_l0,
                                rnn.bias_ih_l0, rnn.bias_hh_l0)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], expected_h, rtol=1e-12, atol=1e-12)
    mine = torch.autograd.grad(out.sum(), [x, rnn.weight_hh_l0])
    theirs = torch.autograd.grad(expected.sum(), [x, rnn.weight_hh_l0])
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_packed_input_bidirectional_two_layers_and_gradcheck(leaky):
    torch.manual_seed(1)
    rnn = fusedrnn.RNN(3, 4, num_layers=2, nonlinearity="leaky", bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = rnn(packed)
    padded, _ = pad_packed_sequence(out)
    # each sequence alone, unpacked, gives the same rows
    for b in range(3):
        alone, _ = rnn(x[: lengths[b], b:b + 1])
        torch.testing.assert_close(padded[: lengths[b], b:b + 1], alone, rtol=1e-12, atol=1e-12)
    params = tuple(rnn.parameters())
    torch.autograd.gradcheck(lambda xx, *_: rnn(xx)[0], (x[:3, :2].clone().requires_grad_(), *params[:1]),
                             eps=1e-6, atol=1e-6)


def test_the_cell_module_and_the_functional_form(leaky):
    torch.manual_seed(2)
    cell = fusedrnn.RNNCell(3, 4, nonlinearity="leaky", dtype=torch.float64)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    expected, _ = loop(x[None], h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(cell(x, h), expected[0], rtol=1e-12, atol=1e-12)
    res = fusedrnn.functional.rnn_layer(x[None], h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                        nonlinearity="leaky")
    torch.testing.assert_close(res[0][0], expected[0], rtol=1e-12, atol=1e-12)


def test_the_op_runs_it_by_mode(leaky):
    torch.manual_seed(3)
    x, h0 = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    w_ih, w_hh = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    b = torch.zeros(5, dtype=torch.float64)
    out, h_n, _, _ = torch.ops.fusedrnn.rnn_forward(x, h0, None, w_ih, w_hh, b, b, None, None, None, False,
                                                     "leaky", "reference")
    expected, expected_h = loop(x, h0, w_ih, w_hh, b, b)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, expected_h, rtol=1e-12, atol=1e-12)


def test_the_checker_passes_it_on_the_reference_backend(leaky):
    """fusedrnn.check's comparison (torch.nn has no such cell: the reference oracle only)."""
    checker = ft.Checker("cpu")
    for dtype in (torch.float64, torch.float32):
        for option in ("padded", "packed-reverse"):
            outcome = checker.check("reference", ft.Case("rnn-leaky", (5, 3, 4, 7), option), dtype)
            assert outcome.skipped is None and outcome.crashed is None, outcome
            assert outcome.passed, str(outcome)
            assert any(r.quantity == "grad_w_hh" for r in outcome.rows)


def test_an_unregistered_mode_is_still_refused_as_torch_refuses_it():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'leaky'. Select from 'tanh' or 'relu'."):
        fusedrnn.RNN(3, 4, nonlinearity="leaky")
