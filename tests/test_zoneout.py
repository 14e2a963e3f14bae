"""Zoneout (haste's, fusedrnn/zoneout.py) on every module that takes it: LSTM (with and without a projection),
GRU (both forms), LayerNorm LSTM and GRU, IndRNN; and the cpu backend's zoneout kernels.

Against an independent plain-PyTorch loop (tests/new_cells.py: each cell's step from its equations, zoneout
as a select by the mask) in float64, values and gradients: training with the masks the test draws itself in
the documented order under the same seed (two layers, bidirectional, initial states; packed sequences of
unsorted lengths), evaluation with the expectation.  Then: seeds reproduce the masks and a zoned-out unit
keeps its previous value exactly; zoneout=0 is bitwise the module without zoneout; float64 gradcheck of the
functional form with a fixed mask; bad rates and masks raise torch.nn's exception types naming the argument;
which backend runs it; what revert, repr, state_dict and pickle make of it.  Then the cpu backend's kernels
(LSTM with peepholes and projection, both GRU forms, RNN; every strategy) against the reference backend in
float64 and float32, training and evaluation, padded and packed, both directions; gradcheck through the op;
fused against gemm; 1 and 2 threads bitwise; modules, torch.compile; bad masks.
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
    """"auto" runs zoneout where the preferred backend has kernels for it (the cpu backend's, every cell it runs:
    silently), else falls back to the reference, warning once; a named backend without zoneout kernels for the
    cell refuses the call."""
    monkeypatch.setattr(backends, "_warned", set())  # the warning is once per process: as if this were the first
    x = torch.randn(4, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference, named, runs it without a word
        fusedrnn.LSTM(3, 4, zoneout=0.1, backend="reference")(x)
        fusedrnn.LSTM(3, 4, zoneout=0.1, backend="reference").eval()(x)
    if "cpu" not in backends.available():
        return  # the compiled extension is not built here: only the reference and auto to check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cpu kernels run these cells with zoneout: no fallback
        fusedrnn.LSTM(3, 4, zoneout=0.1)(x)
        fusedrnn.GRU(3, 4, zoneout=0.1, backend="cpu").eval()(x)
        fusedrnn.LayerNormGRU(3, 4, zoneout=0.1)(x)
    # as if the cpu backend had no zoneout kernels for the GRU (as cuda and triton have none yet)
    monkeypatch.setattr(type(backends.get("cpu")), "zoneout_cells", frozenset({("lstm", "lstm")}))
    rnn = fusedrnn.GRU(3, 4, zoneout=0.1)
    for call in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rnn(x)
        said = [str(w.message) for w in caught if "zoneout" in str(w.message)]
        assert len(said) == (1 if call == 0 else 0), said
    with pytest.raises(RuntimeError, match="'cpu' cannot run this call: it has no kernels for zoneout with the"):
        fusedrnn.GRU(3, 4, zoneout=0.1, backend="cpu")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedrnn.GRU(3, 4)(x)  # without zoneout the cpu kernels run it as ever
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


# ----------------------------------------------------------------------------
# The cpu backend's kernels (csrc/cpu) against the reference backend
# ----------------------------------------------------------------------------

_CPU_WHY = backends.unavailable_reason("cpu")
needs_cpu = pytest.mark.skipif(_CPU_WHY is not None, reason=f"the fused CPU kernels are not built: {_CPU_WHY}")

#: name -> (cell, peepholes, projection): every cell the cpu kernels run with zoneout
KERNEL_CELLS = {
    "lstm": (CellSpec("lstm", "lstm"), False, False),
    "lstm-peephole": (CellSpec("lstm", "lstm"), True, False),
    "lstm-proj": (CellSpec("lstm", "lstm"), False, True),
    "lstm-peephole-proj": (CellSpec("lstm", "lstm"), True, True),
    "gru": (CellSpec("gru", "reset_after"), False, False),
    "gru-reset-before": (CellSpec("gru", "reset_before"), False, False),
    "rnn-tanh": (CellSpec("rnn", "tanh"), False, False),
    "rnn-relu": (CellSpec("rnn", "relu"), False, False),
    "indrnn-relu": (CellSpec("indrnn", "relu"), False, False),
    "indrnn-tanh": (CellSpec("indrnn", "tanh"), False, False),
    "layer-norm-lstm": (CellSpec("layer_norm_lstm", "layer_norm_lstm"), False, False),
    "layer-norm-gru": (CellSpec("layer_norm_gru", "layer_norm_gru"), False, False),
}
#: (strategy, dtype) runs of the cpu backend: float64 takes the gemm strategy whatever is forced
KERNEL_RUNS = [("gemm", F64), ("gemm", torch.float32), ("fused", torch.float32), ("folded", torch.float32)]
#: padded or packed rows of unequal lengths, forward or reverse direction
LAYOUTS = ["padded", "padded-reverse", "packed", "packed-reverse"]
KERNEL_TOL = {F64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
# float32 gradients sum many rounded terms (a few steps back through W_hh): a little more room
GRAD_TOL = {F64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.fixture
def cpu_strategy():
    """Sets the cpu backend's strategy for a test, restored after."""
    cpu = backends.get("cpu") if _CPU_WHY is None else None
    before = cpu.strategy if cpu is not None else None

    def set_strategy(name):
        cpu.strategy = name

    yield set_strategy
    if cpu is not None:
        cpu.strategy = before


def kernel_problem(name, dtype, layout="padded", T=6, B=5, I=7, H=19, seed=0, training=True):
    """(cell, leaves, weights, batch_sizes, reverse, mask, zoneout): a layer-direction's random inputs as leaves
    that require grad, and a drawn 0/1 mask (training) or None (evaluation)."""
    cell, peephole, proj = KERNEL_CELLS[name]
    g = torch.Generator().manual_seed(seed)
    P = max(1, 2 * H // 3) if proj else H
    G = cell.gates

    def rnd(*shape, scale=0.4):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    # packed: sequences of unequal lengths, T down to 1
    lengths = [T - (b * (T - 1)) // max(B - 1, 1) for b in range(B)]
    batch_sizes = (torch.tensor([sum(n > t for n in lengths) for t in range(T)]) if layout.startswith("packed")
                   else None)
    x = rnd(int(batch_sizes.sum()), I, scale=1.0) if batch_sizes is not None else rnd(T, B, I, scale=1.0)
    h0 = rnd(B, P, scale=1.0)
    c0 = rnd(B, H, scale=1.0) if cell.has_cell_state else None
    w_hh = rnd(G * H) if cell.record.recurrent == "diagonal" else rnd(G * H, P)  # IndRNN's u: a vector
    # the layer-normalised cells' gains and shift: near their initial values, so that the normalisations matter
    w_extra = ((1 + 0.1 * torch.randn(cell.extra_blocks * H, generator=g, dtype=dtype)).requires_grad_()
               if cell.extra_blocks else None)
    weights = LayerWeights(rnd(G * H, I), w_hh, rnd(G * H), rnd(G * H), rnd(3 * H) if peephole else None,
                           rnd(P, H) if proj else None, w_extra)
    mask = None
    if training:
        mask = (torch.rand(*x.shape[:-1], P, generator=g) > RATE).to(dtype)
    leaves = [t for t in (x, h0, c0, *weights) if t is not None]
    return cell, (x, h0, c0), weights, batch_sizes, layout.endswith("reverse"), mask, leaves


def run_layer(problem, backend):
    cell, (x, h0, c0), weights, batch_sizes, reverse, mask, _ = problem
    return functional.layer(cell, x, h0, c0, weights, batch_sizes, reverse, backend, zoneout=RATE,
                            zoneout_mask=mask)


def values_and_gradients(problem, backend):
    """The layer's (out, h_n, c_n) and the gradients of every leaf for one fixed projection of them."""
    res = [t for t in run_layer(problem, backend) if t is not None]
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in res)
    return [t.detach() for t in res], list(torch.autograd.grad(loss, problem[-1]))


def assert_all_close(mine, theirs, tol, what):
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what} {i}: {m}")


@needs_cpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("strategy, dtype", KERNEL_RUNS, ids=[f"{s}-{str(d)[6:]}" for s, d in KERNEL_RUNS])
@pytest.mark.parametrize("name", sorted(KERNEL_CELLS))
def test_cpu_kernels_match_the_reference(name, strategy, dtype, training, layout, cpu_strategy):
    """Outputs, h_n, c_n and every gradient (x, h0, c0, each weight) of the cpu kernels with zoneout, each
    strategy, against the reference backend: a drawn 0/1 mask (training) and the expectation (evaluation)."""
    cpu_strategy(strategy)
    problem = kernel_problem(name, dtype, layout, training=training)
    values, grads = values_and_gradients(problem, "cpu")
    ref_values, ref_grads = values_and_gradients(problem, "reference")
    assert_all_close(values, ref_values, KERNEL_TOL[dtype], "output")
    assert_all_close(grads, ref_grads, GRAD_TOL[dtype], "gradient")
    # the mask mattered: without zoneout the layer computes something else
    cell, (x, h0, c0), weights, batch_sizes, reverse, _, _ = problem
    plain = functional.layer(cell, x, h0, c0, weights, batch_sizes, reverse, "cpu")
    assert not torch.allclose(plain.out, values[0])


@needs_cpu
@pytest.mark.parametrize("name", sorted(KERNEL_CELLS))
def test_fused_and_gemm_strategies_agree(name, cpu_strategy):
    problem = kernel_problem(name, torch.float32, "packed-reverse", H=37, seed=3)
    runs = []
    for strategy in ("gemm", "fused", "folded"):
        cpu_strategy(strategy)
        runs.append(values_and_gradients(problem, "cpu"))
    for values, grads in runs[1:]:
        assert_all_close(values, runs[0][0], KERNEL_TOL[torch.float32], "output")
        assert_all_close(grads, runs[0][1], GRAD_TOL[torch.float32], "gradient")


@needs_cpu
@pytest.mark.parametrize("name", ["lstm", "lstm-peephole-proj", "gru", "gru-reset-before", "rnn-tanh", "rnn-relu",
                                  "indrnn-relu", "layer-norm-lstm", "layer-norm-gru"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed-reverse"])
def test_gradcheck_through_the_op_with_a_fixed_mask(name, packed):
    """float64 gradcheck of the cpu backend through the graph op itself (torch.ops.fusedrnn.<family>_forward,
    its autograd formula and the kernels' backward), with a fixed 0/1 mask."""
    from fusedrnn.ops import forward_op, op_weights

    problem = kernel_problem(name, F64, "packed-reverse" if packed else "padded", T=4, B=3, I=2, H=3)
    cell, states, weights, batch_sizes, reverse, mask, leaves = problem
    assert 0 < float(mask.mean()) < 1
    nw = op_weights(cell.family)  # six weights, or seven with w_extra (the layer-normalised cells)
    present = [i for i, t in enumerate((*states, *weights[:nw])) if t is not None]

    def run(*tensors):
        args = [None] * (3 + nw)
        for i, t in zip(present, tensors):
            args[i] = t
        out, h_n, c_n, _ = forward_op(cell.family)(*args, batch_sizes, reverse, cell.mode, "cpu", True, "auto", mask)
        return (out, h_n, c_n) if cell.has_cell_state else (out, h_n)

    leaves = [t.detach().requires_grad_() for t in leaves]
    assert torch.autograd.gradcheck(run, leaves)


@needs_cpu
@pytest.mark.parametrize("name", ["lstm", "lstm-proj", "gru", "gru-reset-before", "rnn-relu", "indrnn-tanh",
                                  "layer-norm-lstm", "layer-norm-gru"])
@pytest.mark.parametrize("strategy", ["gemm", "fused"])
def test_one_and_two_threads_give_the_same_bits(name, strategy, cpu_strategy):
    """As tests/test_thread_count.py, with zoneout: a recurrence wide enough for two threads."""
    cpu_strategy(strategy)
    problem = kernel_problem(name, torch.float32, "packed-reverse", B=5, H=257, I=16, seed=5)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the single_thread fixture restores it
        results.append(values_and_gradients(problem, "cpu"))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert torch.equal(a, b)


@needs_cpu
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn-tanh", "indrnn-relu", "layer-norm-lstm", "layer-norm-gru"])
def test_the_workspace_without_zoneout_is_unchanged(name):
    """No cost without zoneout: the kernels' workspace is the cell's; with zoneout only the Elman RNN's and
    IndRNN's grow (by h_new, which their backward needs)."""
    cell, states, weights, batch_sizes, reverse, mask, _ = kernel_problem(name, torch.float32)
    args = (cell.family, cell.mode, *(t.detach() if t is not None else None for t in (*states, *weights[:6])),
            batch_sizes, reverse)
    extra = {} if weights.w_extra is None else {"w_extra": weights.w_extra.detach()}
    H = weights.w_hh.shape[0] // cell.gates
    plain = torch.ops.fusedrnn_C.forward(*args, **extra)[3]
    zoned = torch.ops.fusedrnn_C.forward(*args, **extra, zoneout_mask=mask)[3]
    assert plain.shape[-1] == cell.workspace_blocks * H
    assert zoned.shape[-1] == (cell.workspace_blocks + (cell.family in ("rnn", "indrnn"))) * H


@needs_cpu
@pytest.mark.parametrize("name", ["lstm", "lstm-proj", "gru", "gru-reset-before", "rnn", "indrnn-relu",
                                  "layer-norm-lstm", "layer-norm-gru"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_modules_on_the_cpu_backend_match_the_reference(name, training):
    """Two layers, bidirectional, initial states: the same seed draws the same masks, so backend="cpu" and
    backend="reference" compute the same values and gradients; "auto" takes the cpu kernels, silently."""
    build = {"rnn": fusedrnn.RNN, **{k: v[0] for k, v in ZONEOUT_KINDS.items()}}[name]
    has_c = ZONEOUT_KINDS[name][2] if name in ZONEOUT_KINDS else False
    results = []
    for backend in ("cpu", "reference", "auto"):
        torch.manual_seed(0)
        rnn = build(3, 6, num_layers=2, bidirectional=True, zoneout=RATE, backend=backend,
                    dtype=F64).train(training)
        x = torch.randn(5, 4, 3, dtype=F64, requires_grad=True)
        states = random_states(rnn, has_c, 4)
        torch.manual_seed(21)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback: the cpu kernels run it
            out, hx_n = rnn(x, states if has_c else states[0])
        outputs = [out, *as_tuple(hx_n, has_c)]
        g = torch.Generator().manual_seed(2)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64)).sum() for t in outputs)
        results.append(([t.detach() for t in outputs],
                        torch.autograd.grad(loss, [x, *states, *rnn.parameters()])))
    for values, grads in results[1:]:
        assert_all_close(values, results[0][0], KERNEL_TOL[F64], "output")
        assert_all_close(grads, results[0][1], GRAD_TOL[F64], "gradient")


@needs_cpu
def test_bad_masks_raise_on_the_cpu_backend_as_before():
    """The functional form's checks (torch.nn's exception types, naming zoneout_mask), then the kernel op's own
    (TORCH_CHECK: RuntimeError naming it)."""
    x, w_ih, w_hh = torch.randn(5, 2, 3), torch.randn(12, 3), torch.randn(12, 4)
    for bad, error, match in ((torch.ones(5, 2, 3), RuntimeError, r"zoneout_mask must have shape \[5, 2, 4\]"),
                              (torch.ones(5, 2, 4, dtype=F64), RuntimeError, "zoneout_mask has dtype"),
                              (torch.ones(5, 2, 4, device="meta"), RuntimeError, "zoneout_mask is on meta"),
                              ([1.0], TypeError, "zoneout_mask must be a tensor")):
        with pytest.raises(error, match=match):
            functional.gru_layer(x, None, w_ih, w_hh, zoneout=0.2, zoneout_mask=bad, backend="cpu")
    h0 = torch.zeros(2, 4)
    op = torch.ops.fusedrnn_C.forward
    with pytest.raises(RuntimeError, match=r"zoneout_mask must have shape \[5, 2, 4\]"):
        op("gru", "reset_after", x, h0, None, w_ih, w_hh, None, None, None, None, None, False,
           zoneout_mask=torch.ones(5, 2, 3))
    with pytest.raises(RuntimeError, match="zoneout_mask has dtype"):
        op("gru", "reset_after", x, h0, None, w_ih, w_hh, None, None, None, None, None, False,
           zoneout_mask=torch.ones(5, 2, 4, dtype=F64))


@needs_cpu
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["lstm", "layer-norm-gru"])
def test_compiled_module_with_zoneout_runs_the_kernels(name, training):
    """torch.compile(fullgraph=True) of a module with zoneout: the graph holds the op with its mask (a C++ graph
    op, or one defined in Python for a cell with extra weights), and with the same seed it computes what the
    eager module computes (values and gradients)."""
    torch.manual_seed(0)
    build, _, has_c = ZONEOUT_KINDS[name]
    rnn = build(3, 5, num_layers=2, zoneout=RATE).train(training)
    x = torch.randn(4, 2, 3, requires_grad=True)
    compiled = torch.compile(rnn, fullgraph=True, backend="aot_eager")
    results = []
    for module in (rnn, compiled):
        torch.manual_seed(7)
        out, hx_n = module(x)
        outputs = [out, *as_tuple(hx_n, has_c)]
        grads = torch.autograd.grad(out.square().sum() + sum(t.sum() for t in outputs[1:]), [x, *rnn.parameters()])
        results.append((outputs, grads))
    assert_all_close(results[1][0], results[0][0], KERNEL_TOL[torch.float32], "output")
    assert_all_close(results[1][1], results[0][1], GRAD_TOL[torch.float32], "gradient")
    assert 0 < float(results[0][0][0].detach().abs().sum())


def test_the_cuda_kernel_op_refuses_a_mask():
    """No CUDA kernel runs zoneout yet: csrc/cuda/ops.cpp refuses a mask (checked through the CUDA emulation,
    which compiles the same wrapper for CPU tensors), and the cuda backend lists no zoneout cells."""
    from fusedrnn.backends import cuda as cuda_backend

    assert not cuda_backend.CudaBackend.zoneout_cells
    if cuda_backend.load_emulation() is None:
        pytest.skip("the CUDA emulation is not built here")
    x, h0, w_ih, w_hh = torch.randn(5, 2, 3), torch.zeros(2, 4), torch.randn(12, 3), torch.randn(12, 4)
    with pytest.raises(RuntimeError, match="the CUDA kernels have no zoneout yet: zoneout_mask must be None"):
        torch.ops.fusedrnn_cuda_emulation.forward("gru", "reset_after", x, h0, None, w_ih, w_hh, None, None, None,
                                                  None, None, False, zoneout_mask=torch.ones(5, 2, 4))
