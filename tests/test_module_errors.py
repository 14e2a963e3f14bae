"""Bad input raises what torch.nn raises for the same call (exception type), with a
message that names the problem.

Each case is a function of the library (``torch.nn`` or ``fusedrnn``) that
builds and/or calls a module; it must raise in both, the same type, and
fusedrnn's message must match the case's pattern.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B, T = 3, 4, 2, 5
f64 = torch.float64


def x3(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


CONSTRUCTION = [
    ("dropout_above_one", lambda lib: lib.LSTM(I, H, 2, dropout=1.5), "dropout should be a number in range"),
    ("dropout_negative", lambda lib: lib.GRU(I, H, 2, dropout=-0.1), "dropout should be a number in range"),
    ("dropout_bool", lambda lib: lib.RNN(I, H, 2, dropout=True), "dropout should be a number in range"),
    ("input_size_negative", lambda lib: lib.LSTM(-1, H), "input_size must be greater than zero"),
    ("input_size_zero", lambda lib: lib.GRU(0, H), "input_size must be greater than zero"),
    ("hidden_size_zero", lambda lib: lib.RNN(I, 0), "hidden_size must be greater than zero"),
    ("hidden_size_negative", lambda lib: lib.LSTM(I, -3), "hidden_size must be greater than zero"),
    ("num_layers_zero", lambda lib: lib.LSTM(I, H, 0), "num_layers must be greater than zero"),
    ("input_size_float", lambda lib: lib.LSTM(3.0, H), "input_size should be of type int"),
    ("bias_not_bool", lambda lib: lib.GRU(I, H, bias=1), "bias should be of type bool"),
    ("batch_first_not_bool", lambda lib: lib.LSTM(I, H, batch_first=1), "batch_first should be of type bool"),
    ("proj_size_equal_hidden", lambda lib: lib.LSTM(I, H, proj_size=H), "proj_size has to be smaller"),
    ("proj_size_negative", lambda lib: lib.LSTM(I, H, proj_size=-1), "proj_size should be a positive integer"),
    ("proj_size_on_gru", lambda lib: lib.GRU(I, H, proj_size=2), "proj_size argument is only supported for LSTM"),
    ("proj_size_zero_on_rnn", lambda lib: lib.RNN(I, H, proj_size=0), "proj_size argument is only supported"),
    ("nonlinearity_unknown", lambda lib: lib.RNN(I, H, nonlinearity="sigmoid"), "Unknown nonlinearity 'sigmoid'"),
    ("nonlinearity_positional_unknown", lambda lib: lib.RNN(I, H, 1, "gelu"), "Unknown nonlinearity 'gelu'"),
    ("unexpected_keyword", lambda lib: lib.LSTM(I, H, foo=1), "foo"),
    ("nonlinearity_twice", lambda lib: lib.RNN(I, H, 1, "relu", nonlinearity="tanh"), "nonlinearity"),
    ("cell_negative_size", lambda lib: lib.LSTMCell(I, -2), "negative dimension"),
    ("cell_unexpected_keyword", lambda lib: lib.GRUCell(I, H, proj_size=2), "proj_size"),
]

FORWARD = [
    ("wrong_input_size", lambda lib: lib.LSTM(I, H)(x3(T, B, I + 1)), "input_size. Expected 3, got 4"),
    ("wrong_input_size_packed", lambda lib: lib.GRU(I, H)(pack_padded_sequence(x3(T, B, I + 2), [5, 3])),
     "input_size. Expected 3, got 5"),
    ("input_4d", lambda lib: lib.GRU(I, H)(x3(T, B, I, 1)), "Expected input to be 2D or 3D, got 4D"),
    ("input_1d", lambda lib: lib.LSTM(I, H)(x3(I)), "Expected input to be 2D or 3D, got 1D"),
    ("input_dtype", lambda lib: lib.LSTM(I, H)(x3(T, B, I, dtype=f64)), "input dtype \\(torch.float64\\) does not match"),
    ("input_integer", lambda lib: lib.RNN(I, H)(torch.ones(T, B, I, dtype=torch.long)), "does not match weight dtype"),
    ("hidden_batch", lambda lib: lib.GRU(I, H)(x3(T, B, I), x3(1, B + 1, H)), "Expected hidden size \\(1, 2, 4\\)"),
    ("hidden_layers", lambda lib: lib.RNN(I, H, 2)(x3(T, B, I), x3(1, B, H)), "Expected hidden size \\(2, 2, 4\\)"),
    ("hidden_bidirectional", lambda lib: lib.GRU(I, H, bidirectional=True)(x3(T, B, I), x3(1, B, H)),
     "Expected hidden size \\(2, 2, 4\\)"),
    ("lstm_h_size", lambda lib: lib.LSTM(I, H)(x3(T, B, I), (x3(1, B, H + 1), x3(1, B, H))), "Expected hidden\\[0\\] size"),
    ("lstm_c_size", lambda lib: lib.LSTM(I, H)(x3(T, B, I), (x3(1, B, H), x3(1, B, H + 1))), "Expected hidden\\[1\\] size"),
    ("lstm_proj_h_is_p", lambda lib: lib.LSTM(I, H, proj_size=2)(x3(T, B, I), (x3(1, B, H), x3(1, B, H))),
     "Expected hidden\\[0\\] size \\(1, 2, 2\\)"),
    ("packed_hidden_batch", lambda lib: lib.GRU(I, H)(pack_padded_sequence(x3(T, B, I), [5, 3]), x3(1, B + 1, H)),
     "Expected hidden size"),
    ("hx_2d_for_batched", lambda lib: lib.GRU(I, H)(x3(T, B, I), x3(B, H)), "hx should also be 3-D but got 2-D"),
    ("hx_3d_for_unbatched", lambda lib: lib.RNN(I, H)(x3(T, I), x3(1, 1, H)), "hx should also be 2-D but got 3-D"),
    ("lstm_hx_2d_for_batched", lambda lib: lib.LSTM(I, H)(x3(T, B, I), (x3(B, H), x3(B, H))),
     "hx and cx should also be 3-D"),
    ("hx_dtype", lambda lib: lib.GRU(I, H)(x3(T, B, I), x3(1, B, H, dtype=f64)), "hx dtype \\(torch.float64\\)"),
    ("lstm_hx_dtype", lambda lib: lib.LSTM(I, H)(x3(T, B, I), (x3(1, B, H, dtype=f64), x3(1, B, H))),
     "hx dtype \\(torch.float64\\)"),
    ("rnn_hx_dtype", lambda lib: lib.RNN(I, H)(x3(T, B, I), x3(1, B, H, dtype=f64)), "hx dtype"),
    ("lstm_hx_device", lambda lib: lib.LSTM(I, H)(x3(T, B, I), (torch.zeros(1, B, H, device="meta"), x3(1, B, H))),
     "not on the same device"),
    ("cell_input_3d", lambda lib: lib.LSTMCell(I, H)(x3(T, B, I)), "LSTMCell: Expected input to be 1D or 2D, got 3D"),
    ("gru_cell_input_3d", lambda lib: lib.GRUCell(I, H)(x3(T, B, I)), "GRUCell: Expected input to be 1D or 2D, got 3D"),
    ("cell_hx_3d", lambda lib: lib.LSTMCell(I, H)(x3(B, I), (x3(1, B, H), x3(B, H))), "Expected hx\\[0\\] to be 1D or 2D"),
    ("rnn_cell_hidden_3d", lambda lib: lib.RNNCell(I, H)(x3(B, I), x3(1, B, H)), "Expected hidden to be 1D or 2D"),
    ("cell_input_size", lambda lib: lib.GRUCell(I, H)(x3(B, I + 1)), "input has inconsistent input_size: got 4 expected 3"),
    ("cell_hidden_batch", lambda lib: lib.LSTMCell(I, H)(x3(B, I), (x3(B + 1, H), x3(B + 1, H))),
     "Input batch size 2 doesn't match hidden0 batch size 3"),
    ("cell_hidden_size", lambda lib: lib.RNNCell(I, H)(x3(B, I), x3(B, H + 1)), "hidden0 has inconsistent hidden_size"),
    ("cell_c_size", lambda lib: lib.LSTMCell(I, H)(x3(B, I), (x3(B, H), x3(B, H + 2))), "hidden1 has inconsistent"),
    ("cell_unbatched_with_batched_hx", lambda lib: lib.GRUCell(I, H)(x3(I), x3(B, H)), "hidden0 has inconsistent"),
    ("cell_hx_dtype", lambda lib: lib.GRUCell(I, H)(x3(B, I), x3(B, H, dtype=f64)), "hx dtype"),
    ("cell_input_dtype", lambda lib: lib.LSTMCell(I, H)(x3(B, I, dtype=f64)), "input dtype"),
    ("cell_hx_device", lambda lib: lib.RNNCell(I, H)(x3(B, I), torch.zeros(B, H, device="meta")), "same device"),
]


def _rnn_cell_with_unknown_nonlinearity(lib):
    cell = lib.RNNCell(I, H, nonlinearity="sigmoid")  # accepted at construction, as torch does
    return cell(x3(B, I))


FORWARD.append(("rnn_cell_unknown_nonlinearity", _rnn_cell_with_unknown_nonlinearity, "Unknown nonlinearity: sigmoid"))

CASES = CONSTRUCTION + FORWARD


@pytest.mark.parametrize("call,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_exception_type_as_torch(call, pattern):
    with pytest.raises(Exception) as torch_error:
        call(nn)
    with pytest.raises(Exception, match=pattern) as fused_error:
        call(fusedrnn)
    assert type(fused_error.value) is type(torch_error.value), (
        f"torch.nn raised {type(torch_error.value).__name__}: {torch_error.value}; "
        f"fusedrnn raised {type(fused_error.value).__name__}: {fused_error.value}"
    )


# ----------------------------------------------------------------------------
# The extras
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("call,exception,pattern", [
    (lambda: fusedrnn.LSTM(I, H, backend="no_such_backend"), ValueError, "unknown fusedrnn backend 'no_such_backend'"),
    (lambda: fusedrnn.GRUCell(I, H, backend="no_such_backend"), ValueError, "unknown fusedrnn backend"),
    (lambda: fusedrnn.LSTM(I, H, peephole=1), TypeError, "peephole should be of type bool"),
    (lambda: fusedrnn.GRU(I, H, reset_after="no"), TypeError, "reset_after should be of type bool"),
    (lambda: fusedrnn.GRU(I, H, peephole=True), TypeError, "peephole"),
    (lambda: fusedrnn.LSTM(I, H, reset_after=False), TypeError, "reset_after"),
    (lambda: fusedrnn.RNNCell(I, H, peephole=True), TypeError, "peephole"),
    (lambda: fusedrnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, True), TypeError, "positional"),
], ids=["module_backend", "cell_backend", "peephole_type", "reset_after_type", "peephole_on_gru",
        "reset_after_on_lstm", "peephole_on_rnn_cell", "extras_are_keyword_only"])
def test_bad_extras(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_lstm_hx_must_be_a_pair():
    """torch.nn raises IndexError here (from hx[1]); so does fusedrnn, saying what hx must be."""
    with pytest.raises(IndexError):
        torch.nn.LSTM(I, H)(x3(T, B, I), x3(1, B, H))
    with pytest.raises(IndexError, match="tuple \\(h_0, c_0\\)"):
        fusedrnn.LSTM(I, H)(x3(T, B, I), x3(1, B, H))


def test_unusable_backend_raises_at_call_with_the_reason(monkeypatch):
    """An explicit backend that cannot run the call raises RuntimeError naming why; checked per call,
    not at construction (the module may move to a device where it can run)."""
    real = fusedrnn.backends.unavailable_reason
    monkeypatch.setattr(fusedrnn.backends, "unavailable_reason",
                        lambda name: "switched off by this test" if name == "reference" else real(name))
    module = fusedrnn.LSTM(I, H, backend="reference")
    with pytest.raises(RuntimeError, match="fusedrnn backend 'reference' cannot run this call: switched off"):
        module(x3(T, B, I))
