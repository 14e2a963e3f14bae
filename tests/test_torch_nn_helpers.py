"""fusedrnn's classes as torch.nn's: ``isinstance`` against torch.nn's RNN classes, and torch.nn's
semi-public helpers (``check_forward_args``, ``permute_hidden``, ``all_weights``, ``_flat_weights``, ...)
giving the same results and errors as on the torch.nn twin.  Client code relies on both (the client
patterns themselves, on converted models: test_client_patterns.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B, T = 3, 6, 4, 5
F64 = torch.float64


# ----------------------------------------------------------------------------
# isinstance against torch.nn's classes
# ----------------------------------------------------------------------------

TORCH_CLASSES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


@pytest.mark.parametrize("module, torch_cls, base", [
    (fusedrnn.LSTM(I, H, proj_size=2, peephole=True), nn.LSTM, nn.RNNBase),
    (fusedrnn.GRU(I, H, reset_after=False), nn.GRU, nn.RNNBase),
    (fusedrnn.RNN(I, H, nonlinearity="relu"), nn.RNN, nn.RNNBase),
    (fusedrnn.LSTMCell(I, H, peephole=True), nn.LSTMCell, nn.RNNCellBase),
    (fusedrnn.GRUCell(I, H), nn.GRUCell, nn.RNNCellBase),
    (fusedrnn.RNNCell(I, H), nn.RNNCell, nn.RNNCellBase),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None)
def test_each_class_is_an_instance_of_its_torch_twin_only(module, torch_cls, base):
    assert isinstance(module, torch_cls) and isinstance(module, base)
    assert [cls for cls in TORCH_CLASSES if isinstance(module, cls)] == [torch_cls]


# ----------------------------------------------------------------------------
# torch.nn's semi-public helpers: the same results and errors as torch's on equivalent modules
# ----------------------------------------------------------------------------

HELPER_CASES = {
    "lstm_proj_bi_batch_first": (nn.LSTM, fusedrnn.LSTM, dict(num_layers=2, proj_size=2, bidirectional=True,
                                                              batch_first=True)),
    "gru": (nn.GRU, fusedrnn.GRU, dict(num_layers=2)),
    "rnn_relu_bi": (nn.RNN, fusedrnn.RNN, dict(nonlinearity="relu", bidirectional=True)),
}


def outcome(fn):
    """What a call gives: ("ok", value) or (exception type, message)."""
    try:
        return "ok", fn()
    except Exception as error:  # the comparison is the point: any exception, type and message
        return type(error), str(error)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(params=list(HELPER_CASES), ids=list(HELPER_CASES))
def helper_pair(request):
    torch_cls, fused_cls, options = HELPER_CASES[request.param]
    torch.manual_seed(0)
    reference = torch_cls(I, H, dtype=F64, **options)
    torch.manual_seed(0)
    fused = fused_cls(I, H, dtype=F64, **options)
    return reference, fused


def helper_calls(m):
    """torch.nn's helpers called as client code does, valid and invalid arguments."""
    is_lstm = isinstance(m, nn.LSTM)
    d = 2 if m.bidirectional else 1
    hout = m.proj_size or m.hidden_size
    x = torch.randn(B, T, I, dtype=F64) if m.batch_first else torch.randn(T, B, I, dtype=F64)
    packed = rnn_utils.pack_padded_sequence(torch.randn(T, B, I, dtype=F64), [5, 4, 2, 1])
    h = torch.randn(m.num_layers * d, B, hout, dtype=F64)
    c = torch.randn(m.num_layers * d, B, m.hidden_size, dtype=F64)
    hx = (h, c) if is_lstm else h
    wrong_hx = (h, h[:, :2]) if is_lstm else h[:, :2]
    perm = torch.tensor([2, 0, 3, 1])
    calls = {
        "get_expected_hidden_size": lambda: m.get_expected_hidden_size(x, None),
        "get_expected_hidden_size_packed": lambda: m.get_expected_hidden_size(packed.data, packed.batch_sizes),
        "check_forward_args": lambda: m.check_forward_args(x, hx, None),
        "check_forward_args_wrong_hidden": lambda: m.check_forward_args(x, wrong_hx, None),
        "check_forward_args_packed": lambda: m.check_forward_args(packed.data, hx, packed.batch_sizes),
        "check_input_wrong_size": lambda: m.check_input(x[..., :2], None),
        "check_input_wrong_rank": lambda: m.check_input(x[0], None),
        "check_input_wrong_dtype": lambda: m.check_input(x.float(), None),
        "check_hidden_size": lambda: m.check_hidden_size(h[:1], (9, 9, 9), "Expected {}, got {}"),
        "permute_hidden": lambda: m.permute_hidden(hx, perm),
        "permute_hidden_none": lambda: m.permute_hidden(hx, None) is hx,
        "all_weights": lambda: m.all_weights,
        "_flat_weights": lambda: m._flat_weights,
        "_flat_weights_names": lambda: m._flat_weights_names,
        "_weights_have_changed": lambda: m._weights_have_changed(),
        "flatten_parameters": lambda: m.flatten_parameters(),
        "extra_repr": lambda: m.extra_repr(),
    }
    if is_lstm:
        calls["get_expected_cell_size"] = lambda: m.get_expected_cell_size(x, None)
    return calls


def test_helpers_give_torch_results_and_errors(helper_pair):
    reference, fused = helper_pair
    torch.manual_seed(1)
    expected = {name: outcome(call) for name, call in helper_calls(reference).items()}
    torch.manual_seed(1)
    actual = {name: outcome(call) for name, call in helper_calls(fused).items()}
    assert list(actual) == list(expected)
    for name in expected:
        assert same(actual[name], expected[name]), f"{name}: {actual[name]} != {expected[name]}"
    # the invalid calls did raise (a helper that checked nothing would agree with another one)
    assert expected["check_forward_args_wrong_hidden"][0] is RuntimeError
    assert expected["check_input_wrong_dtype"][0] is ValueError


def test_flat_weights_follow_parameter_replacement_and_dtype_moves(helper_pair):
    """torch refreshes a cached list in __setattr__ and _apply; fusedrnn reads the parameters at each access."""
    _, fused = helper_pair
    new = nn.Parameter(torch.zeros_like(fused.weight_hh_l0))
    fused.weight_hh_l0 = new
    assert fused._flat_weights[fused._flat_weights_names.index("weight_hh_l0")] is new
    fused.float()
    assert [id(w) for w in fused._flat_weights] == [id(p) for p in fused.parameters()]
    assert all(w.dtype == torch.float32 for w in fused._flat_weights)
    assert "_flat_weight_refs" not in fused.__dict__ and "_flat_weights" not in fused.__dict__
