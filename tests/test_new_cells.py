"""The cells users pick haste for (issue 16), on the reference backend: IndRNN, LayerNorm LSTM and GRU.

Each cell's module and step-wise cell against an independent plain-PyTorch loop of its equations
(tests/new_cells.py) in float64 (values and gradients) and float32; batched, batch_first, unbatched,
packed with unsorted lengths, bidirectional over two layers, initial states; float64 gradcheck of the
module and of the graph op; state_dict round trip; bad input raising torch.nn's exception types naming
the argument; an empty batch; NaN propagation; torch.compile(fullgraph=True) and torch.export of the
module; "auto" falling back to the reference backend with its once-only warning; fusedrnn.check's grid.
Then each cell's own facts (initialisation, haste's layout).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, check, functional
from fusedrnn.layer import LayerWeights

import fuzz_cases
from new_cells import (KINDS, assert_auto_falls_back_once, assert_same_values_and_gradients, cell_params,
                       gradcheck_graph_op, plain_loop, plain_stack)

# auto's fallback warning is asserted once (test_auto_falls_back_once_with_a_warning); elsewhere expected
pytestmark = [pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning"),
              pytest.mark.usefixtures("single_thread")]

F64 = torch.float64


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    """(name, module builder, cell builder, plain step, has a cell state)."""
    return (request.param, *KINDS[request.param])


def states_of(result, has_c):
    return tuple(result) if has_c else (result,)


def as_hx(states):
    return states if len(states) == 2 else states[0]


def random_states(has_c, *shape, dtype=F64):
    return tuple(torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(2 if has_c else 1))


# ----------------------------------------------------------------------------
# The module against the plain loop
# ----------------------------------------------------------------------------


def test_batch_first_with_initial_states(kind):
    name, build, _, step, has_c = kind
    rnn = build(3, 5, dtype=F64, batch_first=True)
    x = torch.randn(2, 6, 3, dtype=F64, requires_grad=True)
    states = random_states(has_c, 1, 2, 5)
    out, hx_n = rnn(x, as_hx(states))
    expected_out, *expected_states = plain_stack(rnn, step, x.transpose(0, 1), states, has_c)
    assert_same_values_and_gradients((out, *states_of(hx_n, has_c)), (expected_out.transpose(0, 1), *expected_states),
                                     [x, *states, *rnn.parameters()])


def test_unbatched_without_bias_or_states(kind):
    name, build, _, step, has_c = kind
    rnn = build(3, 4, bias=False, dtype=F64)
    assert not any("bias_ih" in n or "bias_hh" in n for n, _ in rnn.named_parameters())
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    out, hx_n = rnn(x)
    expected_out, *expected_states = plain_stack(rnn, step, x.unsqueeze(1), None, has_c)
    assert out.shape == (5, 4) and states_of(hx_n, has_c)[0].shape == (1, 4)
    assert_same_values_and_gradients((out, *states_of(hx_n, has_c)),
                                     (expected_out.squeeze(1), *(s.squeeze(1) for s in expected_states if s is not None)),
                                     [x, *rnn.parameters()])


def test_packed_unsorted_bidirectional_two_layers_with_states(kind):
    """Each sequence of a packed batch (unsorted lengths, states permuted with them) as if run alone."""
    name, build, _, step, has_c = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True, dtype=F64)
    x = torch.randn(5, 3, 3, dtype=F64, requires_grad=True)
    lengths = torch.tensor([2, 5, 4])
    states = random_states(has_c, 4, 3, 4)
    out, hx_n = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), as_hx(states))
    padded, _ = pad_packed_sequence(out)
    mine, theirs = [], []
    for b, n in enumerate(lengths.tolist()):
        alone = plain_stack(rnn, step, x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in states), has_c)
        mine += [padded[:n, b:b + 1], *(s[:, b:b + 1] for s in states_of(hx_n, has_c))]
        theirs += [t for t in alone if t is not None]
    assert_same_values_and_gradients(mine, theirs, [x, *states, *rnn.parameters()])


def test_float32_within_the_documented_tolerance(kind):
    """float32 against the plain loop in float64 on the same (rounded) values, within the bound for a chain of
    T steps x layers of dependent roundings (tests/fuzz_cases.py: tolerance; 1e-5 x sqrt(40) here).  The
    modules run on the cpu backend's kernels, whose float32 gate functions are polynomials (gate_math.h, a
    few times torch's rounding error), and a layer-normalised LSTM's normalisation of c' over few units
    (H = 16) amplifies what c' carries: seen up to 1.3e-5, where the reference backend's own float32 is at 2e-6."""
    name, build, _, step, has_c = kind
    rnn = build(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(20, 4, 8)
    with torch.no_grad():
        out, hx_n = rnn(x)
    rnn64 = build(8, 16, num_layers=2, bidirectional=True, dtype=F64)
    rnn64.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        expected = plain_stack(rnn64, step, x.double(), None, has_c)
    for mine, theirs in zip((out, *states_of(hx_n, has_c)), expected):
        assert ft.error(mine.double(), theirs)[1] <= fuzz_cases.tolerance(torch.float32, depth=20 * 2)


def test_gradcheck_of_the_module(kind):
    name, build, _, step, has_c = kind
    rnn = build(2, 3, num_layers=2, bidirectional=True, dtype=F64)
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    states = random_states(has_c, 4, 2, 3)
    params = list(rnn.parameters())

    def run(x, *leaves):
        hx = leaves[: len(states)]
        with torch.nn.utils.stateless._reparametrize_module(
                rnn, dict(zip((n for n, _ in rnn.named_parameters()), leaves[len(states):]))):
            out, hx_n = rnn(x, as_hx(hx))
        return (out, *states_of(hx_n, has_c))

    assert torch.autograd.gradcheck(run, (x, *states, *params))


def test_gradcheck_through_the_op(kind):
    """The family's graph op (defined from Python) and its autograd formula, in float64."""
    gradcheck_graph_op(kind[0])


def test_the_cell_is_one_step_of_the_layer(kind):
    name, _, build_cell, step, has_c = kind
    cell = build_cell(3, 4, dtype=F64)
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    states = random_states(has_c, 2, 4)
    mine = cell(x, as_hx(states))
    theirs = step(x, states[0], states[1] if has_c else None, cell_params(cell))
    assert_same_values_and_gradients(states_of(mine, has_c), theirs, [x, *states, *cell.parameters()])
    # unbatched, no state
    one = cell(x[0].detach())
    expected = step(x[:1].detach(), *(torch.zeros(1, 4, dtype=F64),) * 2, cell_params(cell))
    for a, b in zip(states_of(one, has_c), expected):
        torch.testing.assert_close(a, b[0], rtol=1e-12, atol=1e-12)


def test_cell_steps_chained_gradcheck(kind):
    """Two steps of the cell, the first one's state fed to the second, differentiated through both (a decoder's
    training): the second step's backward must not walk the first one's graph (it freed its buffers: found by
    the fuzz campaign, tests/fuzz_cases.py), first and second derivatives."""
    name, build, build_cell, step, has_c = kind
    cell = build_cell(2, 3, dtype=F64)
    xs = [torch.randn(4, 2, dtype=F64, requires_grad=True) for _ in range(2)]

    def two_steps(x0, x1):
        first = cell(x0)
        second = cell(x1, first)
        return (*states_of(first, has_c), *states_of(second, has_c))

    assert torch.autograd.gradcheck(two_steps, xs)
    assert torch.autograd.gradgradcheck(two_steps, xs)


def test_the_cell_and_the_layer_share_the_layout(kind):
    """A one-layer module's layer-0 parameters, named as the cell names them, run the cell's step."""
    name, build, build_cell, step, has_c = kind
    rnn, cell = build(3, 4, dtype=F64), build_cell(3, 4, dtype=F64)
    assert [n + "_l0" for n, _ in cell.named_parameters()] == [n for n, _ in rnn.named_parameters()]
    cell.load_state_dict({n[: -len("_l0")]: p for n, p in rnn.state_dict().items()})
    x = torch.randn(1, 2, 3, dtype=F64)
    out, hx_n = rnn(x)
    torch.testing.assert_close(states_of(cell(x[0]), has_c)[0], out[0], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# state_dict, bad input, empty batch, non-finite values
# ----------------------------------------------------------------------------


def test_state_dict_round_trip_and_pickle(kind):
    name, build, *_ = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True)
    other = build(3, 4, num_layers=2, bidirectional=True)
    other.load_state_dict(rnn.state_dict())
    x = torch.randn(5, 2, 3)
    for a, b in zip(states_of(rnn(x)[1], False), states_of(other(x)[1], False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    copy = pickle.loads(pickle.dumps(rnn))
    torch.testing.assert_close(copy(x)[0], rnn(x)[0], rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(rnn.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(other(x)[0], rnn(x)[0], rtol=0, atol=0)


def test_bad_input_raises_torch_nn_exception_types(kind):
    name, build, build_cell, _, has_c = kind
    rnn = build(3, 4)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 3, got 5"):
        rnn(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="input dtype"):
        rnn(torch.randn(2, 1, 3, dtype=F64))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        rnn(torch.randn(2, 1, 3, 1))
    with pytest.raises(RuntimeError, match="Expected hidden.* size \\(1, 1, 4\\), got \\[1, 1, 6\\]"):
        rnn(torch.randn(2, 1, 3), as_hx(tuple(torch.zeros(1, 1, 6) for _ in range(2 if has_c else 1))))
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        build(3, 4, dropout=2.0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        build(3, 0)
    # a parameter replaced by one of another shape is reported under its own name
    rnn.weight_hh_l0 = torch.nn.Parameter(torch.zeros(4, 4) if rnn.weight_hh_l0.dim() == 1 else torch.zeros(4))
    with pytest.raises(RuntimeError, match="parameter weight_hh_l0 has shape"):
        rnn(torch.randn(2, 1, 3))
    cell = build_cell(3, 4)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 5 expected 3"):
        cell(torch.randn(2, 5))


def test_empty_batch(kind):
    name, build, _, _, has_c = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    out, hx_n = rnn(x)
    assert out.shape == (5, 0, 8)
    assert all(s.shape == (4, 0, 4) for s in states_of(hx_n, has_c))
    out.sum().backward()
    assert x.grad.shape == x.shape and all(p.grad is None or not p.grad.any() for p in rnn.parameters())


def test_nan_propagates_to_its_own_sequence_only(kind):
    """A NaN in one batch entry's input at step t makes its outputs NaN from t on, and no other entry's."""
    name, build, _, _, _ = kind
    rnn = build(3, 4)
    x = torch.randn(6, 3, 3)
    x[2, 1, 0] = float("nan")
    out, _ = rnn(x)
    assert out[:2].isfinite().all() and out[:, [0, 2]].isfinite().all()
    assert out[2:, 1].isnan().all()


# ----------------------------------------------------------------------------
# functional, torch.compile, torch.export, auto, fusedrnn.check
# ----------------------------------------------------------------------------


def test_the_functional_form_is_the_layer(kind):
    name, build, _, step, has_c = kind
    rnn = build(3, 5, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    out, hx_n = rnn(x)
    w = rnn._direction_weights(0, 0, None)
    res = functional.layer(rnn.cell, x, None, None, w)
    for a, b in zip((res.out, res.h_n), (out, states_of(hx_n, has_c)[0][0])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_with_auto(kind):
    """torch.compile(fullgraph=True) of the module on "auto" (falling back to the reference backend):
    one op per layer-direction, forward and backward as eager."""
    name, build, _, _, has_c = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    expected_out, expected_hx = rnn(x)  # eagerly first: the fallback's warning, the backends imported
    torch._dynamo.reset()
    out, hx_n = torch.compile(rnn, fullgraph=True, backend="aot_eager")(x)
    leaves = [x, *rnn.parameters()]
    mine = torch.autograd.grad(out.sin().sum() + sum(s.cos().sum() for s in states_of(hx_n, has_c)), leaves)
    theirs = torch.autograd.grad(expected_out.sin().sum() + sum(s.cos().sum() for s in states_of(expected_hx, has_c)),
                                 leaves)
    for a, b in zip((out, *states_of(hx_n, has_c), *mine), (expected_out, *states_of(expected_hx, has_c), *theirs)):
        torch.testing.assert_close(a, b)


def test_export(kind):
    name, build, *_ = kind
    rnn = build(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    rnn(x)  # the backends imported eagerly, as a model is run before it is exported
    program = torch.export.export(rnn, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert f"fusedrnn.{rnn.cell.family}_forward.default" in targets, targets
    for a, b in zip(states_of(program.module()(x), False), states_of(rnn(x), False)):
        torch.testing.assert_close(a, b)


def cpu_runs(cell) -> bool:
    """Whether the cpu backend is built here and has kernels for ``cell`` (IndRNN's: csrc/cpu)."""
    return "cpu" in backends.available() and backends.get("cpu").runs(cell)


def test_auto_falls_back_once_with_a_warning_and_a_named_backend_refuses(kind, monkeypatch):
    name, build, *_ = kind
    monkeypatch.setattr(backends, "_warned", set())  # the warning is once per process: as if this were the first
    rnn = build(3, 4)
    x = torch.randn(4, 2, 3)
    if cpu_runs(rnn.cell):  # a cell with cpu kernels: auto takes them, with no warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = rnn(x)[0]
        assert not [str(w.message) for w in caught if "using backend" in str(w.message)]
        assert backends.resolve("auto", rnn.cell, x, LayerWeights(rnn.weight_ih_l0, rnn.weight_hh_l0)).name == "cpu"
        twin = build(3, 4, backend="reference")
        twin.load_state_dict(rnn.state_dict())
        torch.testing.assert_close(out, twin(x)[0], rtol=1e-5, atol=1e-6)
        return
    assert_auto_falls_back_once(rnn, x)
    if "cpu" in backends.available():
        with pytest.raises(RuntimeError, match=f"'cpu' cannot run this call: it has no kernels for the "
                                               f"{rnn.cell.family}"):
            build(3, 4, backend="cpu")(x)


def test_the_checker_passes_it_on_the_reference_backend(kind):
    """python -m fusedrnn.check --backends reference on the cell (torch.nn has no twin: the reference oracle)."""
    name, *_ = kind
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = check.main(["--backends", "reference", "--cells", name, "--quick"])
    assert status == 0 and "PASSED" in printed.getvalue() and "grad_w_hh" in printed.getvalue(), printed.getvalue()
    # a backend without the cell's kernels is skipped by the checker, saying why; one with them passes
    if "cpu" in backends.available():
        outcome = ft.Checker("cpu").check("cpu", ft.Case(name, (3, 2, 3, 4)), torch.float32)
        if cpu_runs(ft.VARIANTS[name].cell):
            assert outcome.skipped is None and outcome.passed, str(outcome)
        else:
            assert outcome.skipped == f"it has no kernels for the {ft.VARIANTS[name].cell} cell"


# ----------------------------------------------------------------------------
# IndRNN
# ----------------------------------------------------------------------------


def test_indrnn_layout_and_initialisation():
    torch.manual_seed(0)
    rnn = fusedrnn.IndRNN(3, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    twin = torch.nn.RNN(3, 5, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in rnn.named_parameters()}
    assert list(shapes) == [n for n, _ in twin.named_parameters()]  # torch.nn.RNN's names and order
    assert torch.equal(rnn.weight_ih_l0, twin.weight_ih_l0)  # the first draw is torch.nn's
    for name, p in twin.named_parameters():
        if name.startswith("weight_hh"):
            assert shapes[name] == (5,)
        else:  # torch.nn's distribution (the draws differ after the first vector u, shorter than W_hh)
            assert shapes[name] == tuple(p.shape) and getattr(rnn, name).abs().max() <= 1 / 5 ** 0.5, name
    # the recurrent weights redrawn from U(-0.5, 0.5) after torch.nn's draws (U(-1/sqrt(H), 1/sqrt(H)))
    wide = fusedrnn.IndRNN(3, 400).weight_hh_l0
    assert 1 / 400 ** 0.5 < wide.abs().max() <= 0.5
    assert repr(rnn) == "IndRNN(3, 5, num_layers=2, bidirectional=True)"
    assert repr(fusedrnn.IndRNN(3, 5, nonlinearity="tanh")) == "IndRNN(3, 5, nonlinearity='tanh')"
    assert repr(fusedrnn.IndRNNCell(3, 5)) == "IndRNNCell(3, 5)"
    assert isinstance(rnn, torch.nn.RNNBase) and rnn.cell.family == "indrnn"
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'. Select from 'relu' or 'tanh'."):
        fusedrnn.IndRNN(3, 5, nonlinearity="gelu")


def test_indrnn_functional_form_checks_the_recurrent_weight():
    x, h0 = torch.randn(4, 2, 3), torch.zeros(2, 5)
    w_ih, u = torch.randn(5, 3), torch.rand(5)
    out, h_n, _ = functional.indrnn_layer(x, h0, w_ih, u, nonlinearity="tanh")
    expected, expected_h, _ = plain_loop(KINDS["indrnn-tanh"][2], x, h0, None, {"weight_ih": w_ih, "weight_hh": u})
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match=r"w_hh \[1\*H\], got w_ih \(5, 3\), w_hh \(5, 5\)"):
        functional.indrnn_layer(x, h0, w_ih, torch.randn(5, 5))
    with pytest.raises(RuntimeError, match="b_hh must have shape \\[5\\]"):
        functional.indrnn_layer(x, h0, w_ih, u, torch.zeros(5), torch.zeros(4))


def haste_indrnn(x, h0, kernel, recurrent_scale, bias):
    """haste_pytorch.IndRNN's CPU path (IndRNNScript, zoneout off), in haste's layout."""
    h, outs = h0, []
    Wx = x @ kernel + bias
    for t in range(x.shape[0]):
        h = torch.tanh(Wx[t] + h * recurrent_scale)
        outs.append(h)
    return torch.stack(outs), h


def test_indrnn_loads_hastes_parameters():
    I, H = 3, 5
    haste = {"kernel": torch.randn(I, H, dtype=F64), "recurrent_scale": torch.rand(H, dtype=F64) - 0.5,
             "bias": torch.randn(H, dtype=F64)}
    rnn = fusedrnn.IndRNN(I, H, nonlinearity="tanh", dtype=F64)
    rnn.load_haste_state_dict(haste)
    x = torch.randn(6, 2, I, dtype=F64)
    out, h_n = rnn(x)
    expected, expected_h = haste_indrnn(x, torch.zeros(2, H, dtype=F64), **haste)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], expected_h, rtol=1e-12, atol=1e-12)
    for module, what in ((fusedrnn.IndRNN(I, H), "nonlinearity='tanh'"),
                         (fusedrnn.IndRNN(I, H, nonlinearity="tanh", num_layers=2), "num_layers=1")):
        with pytest.raises(ValueError, match=f"haste's IndRNN has {what}"):
            module.load_haste_state_dict(haste)


# ----------------------------------------------------------------------------
# LayerNorm LSTM and GRU
# ----------------------------------------------------------------------------


def haste_layer_norm_lstm(x, h0, c0, kernel, recurrent_kernel, bias, gamma, gamma_h, beta_h):
    """haste_pytorch.LayerNormLSTM's CPU path (LayerNormLSTMScript, zoneout off), in haste's layout
    (gate blocks i, g, f, o; kernels [in, 4H])."""
    H = recurrent_kernel.shape[0]
    h, c, outs = h0, c0, []
    Wx = torch.nn.functional.layer_norm(x @ kernel, (H * 4,), weight=gamma[0])
    for t in range(x.shape[0]):
        v = torch.nn.functional.layer_norm(h @ recurrent_kernel, (H * 4,), weight=gamma[1]) + Wx[t] + bias
        i, g, f, o = torch.chunk(v, 4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(torch.nn.functional.layer_norm(c, (H,), weight=gamma_h, bias=beta_h))
        outs.append(h)
    return torch.stack(outs), h, c


def haste_layer_norm_gru(x, h0, kernel, recurrent_kernel, bias, recurrent_bias, gamma):
    """haste_pytorch.LayerNormGRU's CPU path (LayerNormGRUScript, zoneout off), in haste's layout (z, r, h)."""
    H = recurrent_kernel.shape[0]
    h, outs = h0, []
    Wx = torch.nn.functional.layer_norm(x @ kernel, (H * 3,), weight=gamma[0]) + bias
    for t in range(x.shape[0]):
        Rh = torch.nn.functional.layer_norm(h @ recurrent_kernel, (H * 3,), weight=gamma[1]) + recurrent_bias
        vx, vh = torch.chunk(Wx[t], 3, 1), torch.chunk(Rh, 3, 1)
        z = torch.sigmoid(vx[0] + vh[0])
        r = torch.sigmoid(vx[1] + vh[1])
        g = torch.tanh(vx[2] + r * vh[2])
        h = z * h + (1 - z) * g
        outs.append(h)
    return torch.stack(outs), h


def _random_haste(I, H, G, gru=False):
    """Random parameters in haste's layout (gains away from one, so that a misplaced gain shows)."""
    p = {"kernel": torch.randn(I, G * H, dtype=F64), "recurrent_kernel": torch.randn(H, G * H, dtype=F64) / H ** 0.5,
         "bias": torch.randn(G * H, dtype=F64), "gamma": torch.rand(2, G * H, dtype=F64) + 0.5}
    if gru:
        p["recurrent_bias"] = torch.randn(G * H, dtype=F64)
    else:
        p["gamma_h"], p["beta_h"] = torch.rand(H, dtype=F64) + 0.5, torch.randn(H, dtype=F64)
    return p


def test_layer_norm_lstm_loads_hastes_parameters_and_computes_hastes_function():
    I, H = 3, 5
    haste = _random_haste(I, H, 4)
    rnn = fusedrnn.LayerNormLSTM(I, H, dtype=F64)
    rnn.load_haste_state_dict(haste)
    x, h0, c0 = torch.randn(6, 2, I, dtype=F64), torch.randn(2, H, dtype=F64), torch.randn(2, H, dtype=F64)
    out, (h_n, c_n) = rnn(x, (h0[None], c0[None]))
    for a, b in zip((out, h_n[0], c_n[0]), haste_layer_norm_lstm(x, h0, c0, **haste)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="haste's LayerNormLSTM has bidirectional=False"):
        fusedrnn.LayerNormLSTM(I, H, bidirectional=True).load_haste_state_dict(haste)


def test_layer_norm_gru_loads_hastes_parameters_and_computes_hastes_function():
    I, H = 3, 5
    haste = _random_haste(I, H, 3, gru=True)
    rnn = fusedrnn.LayerNormGRU(I, H, dtype=F64)
    rnn.load_haste_state_dict(haste)
    x, h0 = torch.randn(6, 2, I, dtype=F64), torch.randn(2, H, dtype=F64)
    out, h_n = rnn(x, h0[None])
    for a, b in zip((out, h_n[0]), haste_layer_norm_gru(x, h0, **haste)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="haste's LayerNormGRU has bias=True"):
        fusedrnn.LayerNormGRU(I, H, bias=False).load_haste_state_dict(haste)


@pytest.mark.parametrize("stack, cell, G", [(fusedrnn.LayerNormLSTM, fusedrnn.LayerNormLSTMCell, 4),
                                            (fusedrnn.LayerNormGRU, fusedrnn.LayerNormGRUCell, 3)])
def test_layer_norm_layout_and_initialisation(stack, cell, G):
    H = 5
    rnn = stack(3, H, num_layers=2, bidirectional=True)
    twin = getattr(torch.nn, stack.__name__[len("LayerNorm"):])(3, H, num_layers=2, bidirectional=True)
    names = [n for n, _ in rnn.named_parameters()]
    lstm = G == 4
    extras = ["ln_weight_ih", "ln_weight_hh"] + (["ln_weight_c", "ln_bias_c"] if lstm else [])
    expected = []
    for torch_names in twin._all_weights:  # per layer-direction: torch.nn's four, then the gains (and shift)
        suffix = torch_names[0][len("weight_ih"):]
        expected += torch_names + [e + suffix for e in extras]
    assert names == expected
    for name, p in rnn.named_parameters():
        stem = name.split("_l")[0] if not name.startswith("ln_") else name.rsplit("_l", 1)[0]
        if stem.startswith("ln_weight"):
            assert torch.equal(p, torch.ones_like(p)), name  # gains: one
            assert p.shape == ((H,) if stem == "ln_weight_c" else (G * H,))
        elif stem == "ln_bias_c" or stem == "bias_hh":
            assert not p.any(), name
        elif stem == "bias_ih":  # haste's: zeros, the forget block forget_bias (1.0) for the LSTM
            expected_bias = torch.zeros(G * H)
            if lstm:
                expected_bias[H:2 * H] = 1.0
            assert torch.equal(p.detach(), expected_bias), name
        else:
            assert p.abs().max() <= 1 / H ** 0.5, name  # torch.nn's U(-1/sqrt(H), 1/sqrt(H))
    one = cell(3, H)
    assert [n for n, _ in one.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", *extras]
    assert repr(rnn) == f"{stack.__name__}(3, 5, num_layers=2, bidirectional=True)"
    assert repr(one) == f"{cell.__name__}(3, 5)"


def test_layer_norm_lstm_forget_bias():
    rnn = fusedrnn.LayerNormLSTM(3, 4, forget_bias=2.5)
    assert rnn.bias_ih_l0[4:8].eq(2.5).all() and not rnn.bias_ih_l0[:4].any() and not rnn.bias_hh_l0.any()
    assert "forget_bias=2.5" in repr(rnn)
    cell = fusedrnn.LayerNormLSTMCell(3, 4, forget_bias=None)  # None: all biases zero
    assert not cell.bias_ih.any() and "forget_bias=None" in repr(cell)


def test_layer_norm_functional_forms():
    H, I = 4, 3
    x, h0, c0 = torch.randn(5, 2, I), torch.randn(2, H), torch.randn(2, H)
    rnn = fusedrnn.LayerNormLSTM(I, H)
    p = {n[: -len("_l0")]: t for n, t in rnn.named_parameters()}
    out, h_n, c_n = functional.layer_norm_lstm_layer(x, h0, c0, p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                                     p["bias_hh"], ln_weight_ih=p["ln_weight_ih"],
                                                     ln_weight_hh=p["ln_weight_hh"], ln_weight_c=p["ln_weight_c"],
                                                     ln_bias_c=p["ln_bias_c"])
    expected, (expected_h, expected_c) = rnn(x, (h0[None], c0[None]))
    for a, b in zip((out, h_n, c_n), (expected, expected_h[0], expected_c[0])):
        torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="ln_weight_c must be a tensor, got NoneType"):
        functional.layer_norm_lstm_layer(x, h0, c0, p["weight_ih"], p["weight_hh"], ln_weight_ih=p["ln_weight_ih"],
                                         ln_weight_hh=p["ln_weight_hh"])
    gru = fusedrnn.LayerNormGRU(I, H)
    q = {n[: -len("_l0")]: t for n, t in gru.named_parameters()}
    with pytest.raises(RuntimeError, match="w_extra must have shape \\[24\\], got \\[23\\]"):
        functional.layer_norm_gru_layer(x, h0, q["weight_ih"], q["weight_hh"], ln_weight_ih=q["ln_weight_ih"],
                                        ln_weight_hh=q["ln_weight_hh"][1:])
    w = gru._direction_weights(0, 0, None)
    with pytest.raises(ValueError, match="w_extra is required for a layer_norm_gru layer: its ln_weight_ih, "
                                         "ln_weight_hh, concatenated"):
        functional.layer(gru.cell, x, h0, None, w._replace(w_extra=None))
    with pytest.raises(ValueError, match="w_extra must be None for a gru\\[reset_after\\] layer"):
        functional.layer(fusedrnn.CellSpec("gru", "reset_after"), x, h0, None, w)


def test_an_extra_parameter_of_the_wrong_dtype_is_named():
    rnn = fusedrnn.LayerNormLSTM(3, 4)
    rnn.ln_weight_c_l0.data = rnn.ln_weight_c_l0.data.double()
    with pytest.raises(RuntimeError, match="parameter ln_weight_c_l0 has dtype torch.float64"):
        rnn(torch.randn(2, 1, 3))
    cell = fusedrnn.LayerNormGRUCell(3, 4)
    cell.ln_weight_hh = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(RuntimeError, match="parameter ln_weight_hh has shape \\[5\\]"):
        cell(torch.randn(2, 3))
