"""fusedrnn.LSTM / GRU / RNN as modules holding parameters, against their torch.nn twins.

Construction (initialisation from the same seed, parameter names and order, random numbers drawn,
state_dict both ways, optimizer state, repr), serialisation, dtype conversion, parameter edits and
functional_call.  The numerics of the forward and backward are in test_modules.py, whose module
pairs (``KINDS``, ``make_pair``) these tests share.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fusedrnn

from test_modules import KINDS, B, H, I, P, T, as_tuple, make_pair

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")


# ----------------------------------------------------------------------------
# Construction: init, parameters, state_dict, repr
# ----------------------------------------------------------------------------

CONSTRUCTIONS = [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm_proj", dict(num_layers=3, bias=False)),
    ("lstm_proj", dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)),
    ("gru", dict(num_layers=2, bidirectional=True, bias=False)),
    ("gru", dict()),
    ("rnn_tanh", dict(num_layers=3, bidirectional=True)),
    ("rnn_relu", dict(num_layers=2, batch_first=True, dropout=0.5)),
]
CONSTRUCTION_IDS = [f"{k}-" + "-".join(f"{n}={v}" for n, v in o.items()) for k, o in CONSTRUCTIONS]


@pytest.mark.parametrize("kind,options", CONSTRUCTIONS, ids=CONSTRUCTION_IDS)
def test_same_seed_gives_same_parameters_in_same_order(kind, options):
    torch_cls, fused_cls, extra = KINDS[kind]
    torch.manual_seed(1234)
    ref = torch_cls(I, H, **extra, **options)
    torch.manual_seed(1234)
    fused = fused_cls(I, H, **extra, **options)
    ref_params, fused_params = list(ref.named_parameters()), list(fused.named_parameters())
    assert [n for n, _ in fused_params] == [n for n, _ in ref_params]
    for (name, a), (_, b) in zip(fused_params, ref_params):
        assert torch.equal(a, b), name
    assert list(fused.buffers()) == [] == list(ref.buffers())
    assert fused._flat_weights_names == ref._flat_weights_names
    assert [[w.shape for w in ws] for ws in fused.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    assert all(a is b for a, b in zip(fused._flat_weights, fused.parameters()))
    assert repr(fused) == repr(ref)


def test_construction_draws_as_many_random_numbers_as_torch():
    """Same RNG state after construction: code that draws next sees the same numbers."""
    torch.manual_seed(7)
    nn.LSTM(I, H, 2, proj_size=P, bidirectional=True)
    after_torch = torch.get_rng_state()
    torch.manual_seed(7)
    fusedrnn.LSTM(I, H, 2, proj_size=P, bidirectional=True)
    assert torch.equal(torch.get_rng_state(), after_torch)


@pytest.mark.parametrize("kind,options", CONSTRUCTIONS, ids=CONSTRUCTION_IDS)
def test_state_dict_round_trips_both_ways(kind, options, close):
    torch_cls, fused_cls, extra = KINDS[kind]
    ref = torch_cls(I, H, dtype=torch.float64, **extra, **options).eval()
    fused = fused_cls(I, H, dtype=torch.float64, **extra, **options).eval()
    fused.load_state_dict(ref.state_dict(), strict=True)  # torch.nn checkpoint -> fusedrnn
    back = torch_cls(I, H, dtype=torch.float64, **extra, **options).eval()
    back.load_state_dict(fused.state_dict(), strict=True)  # and back
    assert list(fused.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    batch_first = options.get("batch_first", False)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    close(fused(x)[0], ref(x)[0])


def test_optimizer_state_moves_between_torch_and_fusedrnn():
    """Optimizer checkpoints are keyed by parameter order, which is torch's."""
    ref, fused = make_pair("lstm_proj", num_layers=2, bidirectional=True)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.1)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ref(x)[0].sum().backward()
    opt_ref.step()
    opt_fused = torch.optim.Adam(fused.parameters(), lr=0.1)
    opt_fused.load_state_dict(opt_ref.state_dict())
    for p_ref, p_fused in zip(ref.parameters(), fused.parameters()):
        state = opt_fused.state[p_fused]
        assert state["exp_avg"].shape == p_fused.shape
        assert torch.equal(state["exp_avg"], opt_ref.state[p_ref]["exp_avg"])


@pytest.mark.parametrize("options,expected", [
    (dict(), "LSTM(3, 37)"),
    (dict(peephole=True), "LSTM(3, 37, peephole=True)"),
    (dict(num_layers=2, backend="reference"), "LSTM(3, 37, num_layers=2, backend='reference')"),
], ids=["plain", "peephole", "backend"])
def test_extras_appear_in_repr_only_when_set(options, expected):
    assert repr(fusedrnn.LSTM(I, H, **options)) == expected


def test_gru_and_rnn_extras_in_repr():
    assert repr(fusedrnn.GRU(I, H, reset_after=False)) == "GRU(3, 37, reset_after=False)"
    assert repr(fusedrnn.RNN(I, H, nonlinearity="relu")) == repr(nn.RNN(I, H, nonlinearity="relu"))


def test_rnn_takes_nonlinearity_as_fourth_positional_argument():
    module = fusedrnn.RNN(I, H, 2, "relu", False)
    assert module.nonlinearity == "relu" and module.mode == "RNN_RELU" and module.bias is False
    assert module.cell == fusedrnn.CellSpec("rnn", "relu")
    twin = nn.RNN(I, H, 2, "relu", False)
    assert [n for n, _ in module.named_parameters()] == [n for n, _ in twin.named_parameters()]


def test_peephole_parameters_follow_bias_and_precede_projection():
    torch.manual_seed(3)
    module = fusedrnn.LSTM(I, H, 2, proj_size=P, bidirectional=True, peephole=True)
    names = [n for n, _ in module.named_parameters()]
    assert names[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ch_l0", "weight_hr_l0"]
    assert "weight_ch_l1_reverse" in names
    assert module.weight_ch_l1_reverse.shape == (3 * H,)
    bound = 1 / H ** 0.5
    assert module.weight_ch_l0.abs().max() <= bound and module.weight_ch_l0.std() > bound / 4  # U(-b, b) like the others
    assert names == module._flat_weights_names


def test_flatten_parameters_is_a_no_op(close):
    ref, fused = make_pair("lstm", num_layers=2)
    before = [p.clone() for p in fused.parameters()]
    fused.flatten_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, fused.parameters()))


# ----------------------------------------------------------------------------
# Serialisation, dtype conversion, parameter edits, functional_call
# ----------------------------------------------------------------------------


def clone_by_pickle(m):
    return pickle.loads(pickle.dumps(m))


def clone_by_torch_save(m):
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("clone", [clone_by_pickle, copy.deepcopy, clone_by_torch_save],
                         ids=["pickle", "deepcopy", "torch_save"])
@pytest.mark.parametrize("kind", ["lstm_proj", "gru", "rnn_relu"])
def test_whole_module_serialises(clone, kind):
    _, fused = make_pair(kind, num_layers=2, bidirectional=True)
    fused.backend = "reference"
    copy_ = clone(fused)
    assert type(copy_) is type(fused) and repr(copy_) == repr(fused) and copy_.cell == fused.cell
    x = torch.randn(T, B, I, dtype=torch.float64)
    for a, b in zip([fused(x)[0], *as_tuple(fused(x)[1])], [copy_(x)[0], *as_tuple(copy_(x)[1])]):
        assert torch.equal(a, b)
    with torch.no_grad():
        copy_.weight_hh_l0.mul_(2)  # the copy owns its parameters
    assert not torch.equal(copy_(x)[0], fused(x)[0])


def test_double_and_to_dtype_convert_like_torch(close):
    ref, fused = make_pair("lstm_proj", torch.float32, num_layers=2, bidirectional=True)
    ref.double()
    fused.double()
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    close(fused(x)[0], ref(x)[0])
    fused.to(torch.float32)
    assert fused(x.float())[0].dtype == torch.float32


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_in_place_parameter_edits_take_effect(kind, close):
    ref, fused = make_pair(kind, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    before = fused(x)[0]
    with torch.no_grad():
        for m in (ref, fused):
            m.weight_hh_l0.mul_(2)
            m.weight_ih_l1.add_(0.1)
    after = fused(x)[0]
    assert not torch.allclose(before, after)
    close(after, ref(x)[0])


def test_replacing_a_parameter_takes_effect(close):
    ref, fused = make_pair("gru", num_layers=2)
    new = nn.Parameter(torch.randn_like(ref.weight_hh_l1))
    ref.weight_hh_l1 = new
    fused.weight_hh_l1 = nn.Parameter(new.detach().clone())
    x = torch.randn(T, B, I, dtype=torch.float64)
    close(fused(x)[0], ref(x)[0])


def test_functional_call_swaps_parameters(close):
    ref, fused = make_pair("lstm", num_layers=2, bidirectional=True)
    replaced = {n: torch.randn_like(p) * 0.3 for n, p in ref.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = torch.func.functional_call(ref, replaced, (x,))
    actual = torch.func.functional_call(fused, replaced, (x,))
    close(actual[0], expected[0])
    close(actual[1][1], expected[1][1])
