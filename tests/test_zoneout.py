"""Zoneout (haste's, fusedrnn/zoneout.py) on every module that takes it: LSTM (with and without a projection),
GRU (both forms), LayerNorm LSTM and GRU, IndRNN.

Against an independent plain-PyTorch loop (tests/new_cells.py: each cell's step from its equations, zoneout
as a select by the mask) in float64, values and gradients: training with the masks the test draws itself in
the documented order under the same seed (two layers, bidirectional, initial states; packed sequences of
unsorted lengths), evaluation with the expectation.  Then: seeds reproduce the masks and a zoned-out unit
keeps its previous value exactly; zoneout=0 is bitwise the module without zoneout; float64 gradcheck of the
functional form with a fixed mask; bad rates and masks raise torch.nn's exception types naming the argument;
which backend runs it; what revert, repr, state_dict and pickle make of it.
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import backends, functional
from fusedrnn.cells import CellSpec
from fusedrnn.layer import LayerWeights

from new_cells import ZONEOUT_KINDS, assert_same_values_and_gradients, direction_params, plain_loop, plain_stack

# auto's zoneout warning is asserted once (test_auto_warns_once_and_a_named_backend_refuses); elsewhere expected
pytestmark = [pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning"),
              pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
RATE = 0.4


@pytest.fixture(params=sorted(ZONEOUT_KINDS))
def kind(request):
    """(name, module builder, plain step, has a cell state)."""
    return (request.param, *ZONEOUT_KINDS[request.param])


def hout_of(module):
    return getattr(module, "proj_size", 0) or module.hidden_size


def documented_masks(module, seed, T, B, dtype=F64):
    """The masks the module draws in training, drawn here as its docs say: the generator seeded, then per layer
    (no dropout here) one bernoulli_(1 - zoneout) of [T, B, H_out] per direction, forward first."""
    torch.manual_seed(seed)
    directions = 2 if module.bidirectional else 1
    return [torch.empty(T, B, hout_of(module), dtype=dtype).bernoulli_(1 - module.zoneout)
            for _ in range(module.num_layers * directions)]


def random_states(module, has_c, B):
    directions = 2 if module.bidirectional else 1
    sizes = (hout_of(module), module.hidden_size) if has_c else (hout_of(module),)
    return tuple(torch.randn(module.num_layers * directions, B, size, dtype=F64, requires_grad=True)
                 for size in sizes)


def as_tuple(result_states, has_c):
    return tuple(result_states) if has_c else (result_states,)


# ----------------------------------------------------------------------------
# Against the plain loop
# ----------------------------------------------------------------------------


def test_training_against_the_plain_loop_with_the_documented_draws(kind):
    name, build, step, has_c = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True, zoneout=RATE, dtype=F64)
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    states = random_states(rnn, has_c, B)
    torch.manual_seed(11)
    out, hx_n = rnn(x, states if has_c else states[0])
    masks = documented_masks(rnn, 11, T, B)
    assert 0 < float(torch.cat(masks).mean()) < 1  # some units zoned out, some not
    expected_out, *expected_states = plain_stack(rnn, step, x, states, has_c, RATE, masks)
    leaves = [x, *states, *rnn.parameters()]
    assert_same_values_and_gradients([out, *as_tuple(hx_n, has_c)], [expected_out, *expected_states], leaves)
    # the masks mattered: without them (the expectation) the loop computes something else
    expectation = plain_stack(rnn, step, x, states, has_c, RATE)[0]
    assert not torch.allclose(expectation, out)


def test_evaluation_is_the_expectation(kind):
    name, build, step, has_c = kind
    rnn = build(3, 4, num_layers=2, batch_first=True, zoneout=RATE, dtype=F64).eval()
    x = torch.randn(3, 5, 3, dtype=F64, requires_grad=True)
    out, hx_n = rnn(x)
    expected_out, *expected_states = plain_stack(rnn, step, x.transpose(0, 1), None, has_c, RATE)
    assert_same_values_and_gradients([out.transpose(0, 1), *as_tuple(hx_n, has_c)],
                                     [expected_out, *expected_states], [x, *rnn.parameters()])
    # deterministic: no draw
    torch.testing.assert_close(rnn(x)[0], out, rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_one_time_step_and_unbatched_input(kind, training):
    """A stack on one step takes the single-step op without zoneout; with it, the zoneout path."""
    name, build, step, has_c = kind
    rnn = build(3, 4, zoneout=RATE, dtype=F64).train(training)
    x = torch.randn(1, 3, dtype=F64)  # unbatched: one sequence of one step
    torch.manual_seed(5)
    out, hx_n = rnn(x)
    masks = documented_masks(rnn, 5, 1, 1) if training else None
    expected = plain_stack(rnn, step, x.unsqueeze(1), None, has_c, RATE, masks)[0]
    torch.testing.assert_close(out, expected.squeeze(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "gru", "layer-norm-lstm"])
def test_packed_unsorted_lengths_bidirectional(name):
    """Packed input: one mask row per packed row ([rows, H_out], the output's layout), time-aligned in both
    directions; each sequence as the plain loop computes it alone, with its rows of the mask."""
    build, step, has_c = ZONEOUT_KINDS[name]
    rnn = build(3, 4, bidirectional=True, zoneout=RATE, dtype=F64)
    lengths = torch.tensor([3, 5, 2])
    x = torch.randn(5, 3, 3, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(3)
    out, _ = rnn(packed)
    torch.manual_seed(3)
    rows = packed.data.shape[0]
    masks = [torch.empty(rows, 4, dtype=F64).bernoulli_(1 - RATE) for _ in range(2)]
    # each mask in the padded layout [T, B, H]: the rows of sequence b, in time order
    padded = [pad_packed_sequence(PackedSequence(m, packed.batch_sizes, packed.sorted_indices,
                                                 packed.unsorted_indices))[0] for m in masks]
    out_padded, _ = pad_packed_sequence(out)
    for b, n in enumerate(lengths.tolist()):
        seq = x[:n, b:b + 1]
        expected = []
        for d in range(2):
            seq_d, mask_d = (seq.flip(0), padded[d][:n, b:b + 1].flip(0)) if d else (seq, padded[d][:n, b:b + 1])
            zeros = [seq.new_zeros(1, 4) for _ in range(2 if has_c else 1)]
            o, _, _ = plain_loop(step, seq_d, zeros[0], zeros[1] if has_c else None, direction_params(rnn, 0, d),
                                 RATE, mask_d)
            expected.append(o.flip(0) if d else o)
        torch.testing.assert_close(out_padded[:n, b:b + 1], torch.cat(expected, -1), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# Seeds, zoneout=0, gradients
# ----------------------------------------------------------------------------


def test_a_seed_reproduces_the_masks_and_a_zoned_out_unit_keeps_its_value():
    rnn = fusedrnn.LSTM(3, 6, zoneout=0.5)
    x = torch.randn(8, 4, 3)
    h0, c0 = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(rnn(x, (h0, c0))[0])
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    mask = documented_masks(rnn, 1, 8, 4, dtype=torch.float32)[0]
    previous = torch.cat([h0, runs[0][:-1]])
    # kept units: exactly the previous h (a select, not a rounding of h_prev + 0 * (h_new - h_prev))
    kept = mask == 0
    assert kept.any() and (~kept).any()
    assert torch.equal(runs[0][kept], previous[kept])
    # the others took their new value: the same step without zoneout from the same previous h and c
    # (c is never zoned out, so every step's c is the plain LSTM's from that h)
    assert not torch.equal(runs[0][~kept], previous[~kept])


@pytest.mark.parametrize("name", ["lstm", "gru", "layer-norm-lstm", "indrnn-relu"])
def test_zero_zoneout_is_bitwise_no_zoneout(name):
    build, _, has_c = ZONEOUT_KINDS[name]
    torch.manual_seed(0)
    plain = build(3, 4, num_layers=2)
    zero = build(3, 4, num_layers=2, zoneout=0.0)
    zero.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    results = []
    for rnn in (plain, zero):
        torch.manual_seed(9)
        out, _ = rnn(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])
        results.append((out, grads))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_an_all_ones_mask_is_bitwise_the_reference_without_zoneout():
    """Every unit taking its new value: the select is exact (m * h_new + (1 - m) * h_prev with m = 1)."""
    x, h0, c0 = torch.randn(5, 2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w = (torch.randn(16, 3), torch.randn(16, 4), torch.randn(16), torch.randn(16))
    base = functional.lstm_layer(x, h0, c0, *w, backend="reference")
    ones = functional.lstm_layer(x, h0, c0, *w, backend="reference", zoneout=0.3, zoneout_mask=torch.ones(5, 2, 4))
    for a, b in zip(base, ones):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell, packed", [(CellSpec("lstm", "lstm"), False), (CellSpec("lstm", "lstm"), True),
                                          (CellSpec("gru", "reset_after"), False),
                                          (CellSpec("layer_norm_gru", "layer_norm_gru"), True)])
def test_gradcheck_with_a_fixed_mask(cell, packed):
    torch.manual_seed(0)
    H, I, G = 3, 2, cell.gates
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = torch.randn(8, I, dtype=F64) if packed else torch.randn(4, 3, I, dtype=F64)
    rows = x.shape[:-1]
    mask = torch.empty(*rows, H, dtype=F64).bernoulli_(0.5)
    h0 = torch.randn(3, H, dtype=F64)
    c0 = torch.randn(3, H, dtype=F64) if cell.has_cell_state else None
    weights = [torch.randn(G * H, I, dtype=F64), torch.randn(G * H, H, dtype=F64), torch.randn(G * H, dtype=F64),
               torch.randn(G * H, dtype=F64)]
    extra = (1 + 0.1 * torch.randn(cell.extra_blocks * H, dtype=F64)) if cell.extra_blocks else None
    leaves = [t.requires_grad_() for t in (x, h0, c0, *weights, extra) if t is not None]

    def run(*tensors):
        it = iter(tensors)
        x_, h_ = next(it), next(it)
        c_ = next(it) if cell.has_cell_state else None
        w = [next(it) for _ in range(4)]
        e = next(it) if extra is not None else None
        res = functional.layer(cell, x_, h_, c_, LayerWeights(*w, None, None, e), batch_sizes, True,
                               zoneout=0.5, zoneout_mask=mask)
        return tuple(t for t in res if t is not None)

    assert torch.autograd.gradcheck(run, leaves)
    assert torch.autograd.gradgradcheck(run, leaves)


# ----------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_a_bad_rate_raises_value_error_naming_zoneout(kind, bad):
    name, build, *_ = kind
    with pytest.raises(ValueError, match="zoneout"):
        build(3, 4, zoneout=bad)
    rnn = build(3, 4)
    rnn.zoneout = bad  # reassigned after construction: refused at the call
    with pytest.raises(ValueError, match="zoneout"):
        rnn(torch.randn(2, 1, 3))


def test_the_functional_form_checks_its_zoneout_arguments():
    x, w_ih, w_hh = torch.randn(5, 2, 3), torch.randn(12, 3), torch.randn(12, 4)
    with pytest.raises(ValueError, match="zoneout"):
        functional.gru_layer(x, None, w_ih, w_hh, zoneout=1.0)
    with pytest.raises(ValueError, match="zoneout_mask is given but zoneout is 0"):
        functional.gru_layer(x, None, w_ih, w_hh, zoneout_mask=torch.ones(5, 2, 4))
    with pytest.raises(RuntimeError, match=r"zoneout_mask must have shape \[5, 2, 4\]"):
        functional.gru_layer(x, None, w_ih, w_hh, zoneout=0.2, zoneout_mask=torch.ones(5, 2, 3))
    with pytest.raises(RuntimeError, match="zoneout_mask has dtype torch.float64"):
        functional.gru_layer(x, None, w_ih, w_hh, zoneout=0.2, zoneout_mask=torch.ones(5, 2, 4, dtype=F64))
    with pytest.raises(TypeError, match="zoneout_mask must be a tensor"):
        functional.gru_layer(x, None, w_ih, w_hh, zoneout=0.2, zoneout_mask=[1.0])


# ----------------------------------------------------------------------------
# Backends, revert, repr, state_dict, pickle
# ----------------------------------------------------------------------------


def test_auto_warns_once_and_a_named_backend_refuses(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())  # the warning is once per process: as if this were the first
    rnn = fusedrnn.LSTM(3, 4, zoneout=0.1)
    x = torch.randn(4, 2, 3)
    for call in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rnn(x)
        said = [str(w.message) for w in caught if "zoneout" in str(w.message)]
        assert len(said) == (1 if call == 0 else 0), said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference, named, runs it without a word
        fusedrnn.LSTM(3, 4, zoneout=0.1, backend="reference")(x)
        fusedrnn.LSTM(3, 4, zoneout=0.1, backend="reference").eval()(x)
    if "cpu" not in backends.available():
        return  # the compiled extension is not built here: only the reference and auto to check
    with pytest.raises(RuntimeError, match="'cpu' cannot run this call: it has no kernels for zoneout"):
        fusedrnn.LSTM(3, 4, zoneout=0.1, backend="cpu")(x)
    with backends.use_backend("cpu"), pytest.raises(RuntimeError, match="no kernels for zoneout"):
        rnn(x)


def test_revert_refuses_and_repr_state_dict_pickle_keep_it():
    rnn = fusedrnn.GRU(3, 4, zoneout=0.25)
    assert "zoneout=0.25" in repr(rnn) and "zoneout" not in repr(fusedrnn.GRU(3, 4))
    with pytest.raises(ValueError, match="zoneout=0.25"):
        fusedrnn.revert(rnn)
    assert set(rnn.state_dict()) == set(fusedrnn.GRU(3, 4).state_dict())  # a setting, not a parameter
    again = pickle.loads(pickle.dumps(rnn)).eval()
    x = torch.randn(4, 2, 3)
    assert again.zoneout == 0.25
    torch.testing.assert_close(again(x)[0], rnn.eval()(x)[0], rtol=0, atol=0)
