"""DropConnect of the recurrent weight (fusedrnn/dropconnect.py, haste's ``dropout``) on every stacked module.

Against the independent plain-PyTorch loops of tests/new_cells.py in float64, values and gradients: training
with the weights the test drops itself in the documented order under the same seed (two layers,
bidirectional, initial states; with zoneout too, whose masks interleave), evaluation with the weights as they
are.  Then: a fresh mask per call and a seed reproduces it; the fused backends run it as the reference does;
a stack on one time step (the single-step path) drops it too; dropconnect=0 and evaluation are bitwise the
module without it; bad rates raise ValueError naming the argument; repr, pickle and revert.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import fusedrnn
from fusedrnn import backends

from new_cells import ZONEOUT_KINDS, assert_same_values_and_gradients, plain_stack

pytestmark = [pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning"),
              pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
RATE = 0.3


def _elman_step(act):
    def step(x, h, c, p):
        return act(x @ p["weight_ih"].t() + p["bias_ih"] + h @ p["weight_hh"].t() + p["bias_hh"]), None
    return step


#: every module that takes ``dropconnect``: name -> (builder, plain step, has a cell state)
KINDS = {
    **ZONEOUT_KINDS,
    "rnn-tanh": (fusedrnn.RNN, _elman_step(torch.tanh), False),
    "rnn-relu": (lambda i, h, **kw: fusedrnn.RNN(i, h, nonlinearity="relu", **kw), _elman_step(torch.relu), False),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return KINDS[request.param]


def directions(module):
    return 2 if module.bidirectional else 1


def dropped_view(module, seed, zoneout_shape=None):
    """What a training call of ``module`` reads, drawn here as the docs say: the generator seeded, then per
    layer-direction (forward first) ``F.dropout(weight_hh, rate)``, then (with zoneout) that layer-direction's
    zoneout mask of ``zoneout_shape``.  Returns a stand-in of the module whose ``weight_hh_*`` are the
    dropped weights (for tests/new_cells.py's plain loops), and the zoneout masks."""
    torch.manual_seed(seed)
    view = SimpleNamespace(bidirectional=module.bidirectional, num_layers=module.num_layers,
                           hidden_size=module.hidden_size, proj_size=getattr(module, "proj_size", 0),
                           _flat_weights_names=module._flat_weights_names)
    for name in module._flat_weights_names:
        setattr(view, name, getattr(module, name))
    masks = []
    for layer in range(module.num_layers):
        for d in range(directions(module)):
            name = f"weight_hh_l{layer}" + ("_reverse" if d else "")
            setattr(view, name, F.dropout(getattr(module, name), RATE, training=True))
            if zoneout_shape is not None:
                masks.append(torch.empty(zoneout_shape, dtype=F64).bernoulli_(1 - module.zoneout))
    return view, masks


def random_states(module, has_c, B):
    hout = getattr(module, "proj_size", 0) or module.hidden_size
    sizes = (hout, module.hidden_size) if has_c else (hout,)
    return tuple(torch.randn(module.num_layers * directions(module), B, size, dtype=F64, requires_grad=True)
                 for size in sizes)


def as_tuple(states, has_c):
    return tuple(states) if has_c else (states,)


def test_training_against_the_plain_loop_with_the_documented_draws(kind):
    build, step, has_c = kind
    rnn = build(3, 4, num_layers=2, bidirectional=True, dropconnect=RATE, dtype=F64)
    T, B = 5, 3
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    states = random_states(rnn, has_c, B)
    torch.manual_seed(7)
    out, hx_n = rnn(x, states if has_c else states[0])
    view, _ = dropped_view(rnn, 7)
    dropped = view.weight_hh_l1_reverse
    assert (dropped == 0).any() and (dropped != 0).any()  # some weights dropped, some not
    expected = plain_stack(view, step, x, states, has_c)
    leaves = [x, *states, *rnn.parameters()]
    assert_same_values_and_gradients([out, *as_tuple(hx_n, has_c)], list(expected), leaves)
    # the drop mattered: with the weights as they are the loop computes something else
    assert not torch.allclose(plain_stack(rnn, step, x, states, has_c)[0], out)


def test_with_zoneout_the_masks_interleave_per_layer_direction():
    build, step, has_c = KINDS["lstm"]
    rnn = build(3, 4, num_layers=2, bidirectional=True, dropconnect=RATE, zoneout=0.4, dtype=F64)
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
    torch.manual_seed(3)
    out, (h_n, c_n) = rnn(x)
    view, masks = dropped_view(rnn, 3, zoneout_shape=(6, 2, 4))
    expected = plain_stack(view, step, x, None, has_c, 0.4, masks)
    assert_same_values_and_gradients([out, h_n, c_n], list(expected), [x, *rnn.parameters()])


def test_evaluation_and_zero_rate_are_bitwise_the_module_without_it(kind):
    build, _, _ = kind
    torch.manual_seed(0)
    plain = build(3, 4, num_layers=2)
    dropping = build(3, 4, num_layers=2, dropconnect=RATE)
    zero = build(3, 4, num_layers=2, dropconnect=0.0)
    for m in (dropping, zero):
        m.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    results = []
    for rnn in (plain, dropping.eval(), zero):
        before = torch.get_rng_state()
        out, _ = rnn(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])
        results.append((out, grads))
        if rnn is not plain:
            assert torch.equal(torch.get_rng_state(), before)  # no draw
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


def test_a_fresh_mask_per_call_and_a_seed_reproduces_it():
    rnn = fusedrnn.GRU(3, 8, dropconnect=0.5)
    x = torch.randn(4, 2, 3)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(rnn(x)[0])
    runs.append(rnn(x)[0])  # the generator moved on: another mask
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[2], runs[3])


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn-tanh", "indrnn-relu", "lstm-proj"])
def test_one_time_step_in_training_drops_too(name):
    """A stack on one time step takes the single-step path; in training with DropConnect the dropped weights."""
    build, step, has_c = KINDS[name]
    rnn = build(3, 4, num_layers=2, dropconnect=RATE, dtype=F64)
    x = torch.randn(1, 2, 3, dtype=F64)
    torch.manual_seed(5)
    out, _ = rnn(x)
    view, _ = dropped_view(rnn, 5)
    torch.testing.assert_close(out, plain_stack(view, step, x, None, has_c)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in ("cpu",) if b in backends.available()] or
                         [pytest.param("cpu", marks=pytest.mark.skip(reason="the cpu backend is not built here"))])
@pytest.mark.parametrize("name", ["lstm", "gru", "gru-reset-before", "rnn-relu", "indrnn-tanh"])
def test_fused_backends_run_it_as_the_reference(backend, name):
    build = KINDS[name][0]
    torch.manual_seed(0)
    fused = build(16, 32, num_layers=2, bidirectional=True, dropconnect=RATE, backend=backend)
    ref = build(16, 32, num_layers=2, bidirectional=True, dropconnect=RATE, backend="reference")
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(7, 4, 16, requires_grad=True)
    results = []
    for rnn in (fused, ref):
        torch.manual_seed(2)
        out, _ = rnn(x)
        results.append((out, torch.autograd.grad(out.sin().sum(), [x, *rnn.parameters()])))
    # float32, different summation orders: ~1e-5 relative (docs/design.md section 8)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, True, "0.1", None])
def test_bad_rates_name_the_argument(rate):
    with pytest.raises(ValueError, match="dropconnect"):
        fusedrnn.LSTM(3, 4, dropconnect=rate)


def test_a_bad_rate_assigned_later_is_refused_at_the_call():
    rnn = fusedrnn.LSTM(3, 4, dropconnect=0.2)
    rnn.dropconnect = 1.0
    with pytest.raises(ValueError, match="dropconnect"):
        rnn(torch.randn(2, 1, 3))


def test_repr_state_dict_pickle_and_revert():
    rnn = fusedrnn.LSTM(3, 4, dropconnect=0.25)
    assert "dropconnect=0.25" in repr(rnn)
    assert "dropconnect" not in repr(fusedrnn.LSTM(3, 4))
    assert list(rnn.state_dict()) == list(fusedrnn.LSTM(3, 4).state_dict())
    assert pickle.loads(pickle.dumps(rnn)).dropconnect == 0.25
    with pytest.raises(ValueError, match="dropconnect"):
        fusedrnn.revert(rnn)
