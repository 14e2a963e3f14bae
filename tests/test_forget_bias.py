"""``forget_bias`` on the plain LSTM and LSTMCell (fusedrnn.rnn_base.init_forget_bias): against torch.nn's
initialisation under the same seed, every parameter the same draw except the forget blocks of the biases,
which sum to ``forget_bias`` (``bias_ih``'s set to it, ``bias_hh``'s zero); None keeps torch.nn's draws
exactly; reset_parameters applies it again; bad values raise TypeError naming the argument.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn

H = 5
FORGET = slice(H, 2 * H)  # the f block of i, f, g, o


def _twins(fused_cls, torch_cls, *args, **kwargs):
    torch.manual_seed(3)
    theirs = torch_cls(*args, **{k: v for k, v in kwargs.items() if k not in ("forget_bias", "peephole")})
    torch.manual_seed(3)
    ours = fused_cls(*args, **kwargs)
    return ours, theirs


def _assert_forget_bias(ours, theirs, forget_bias):
    mine, torchs = ours.state_dict(), theirs.state_dict()
    for name, value in torchs.items():
        expected = value.clone()
        if name.startswith("bias_ih"):
            expected[FORGET] = forget_bias
        elif name.startswith("bias_hh"):
            expected[FORGET] = 0
        assert torch.equal(mine[name], expected), name


@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3),
                                    dict(peephole=True)])
@pytest.mark.parametrize("forget_bias", [1.0, 2.5, 0, -1])
def test_lstm_forget_blocks_sum_to_it_and_the_rest_is_torch_nn(kwargs, forget_bias):
    ours, theirs = _twins(fusedrnn.LSTM, nn.LSTM, 4, H, forget_bias=forget_bias, **kwargs)
    _assert_forget_bias(ours, theirs, forget_bias)
    assert f"forget_bias={forget_bias!r}" in repr(ours)


@pytest.mark.parametrize("forget_bias", [1.0, 3])
def test_lstm_cell(forget_bias):
    ours, theirs = _twins(fusedrnn.LSTMCell, nn.LSTMCell, 4, H, forget_bias=forget_bias)
    _assert_forget_bias(ours, theirs, forget_bias)
    assert f"forget_bias={forget_bias!r}" in repr(ours)


@pytest.mark.parametrize("classes", [(fusedrnn.LSTM, nn.LSTM), (fusedrnn.LSTMCell, nn.LSTMCell)])
def test_none_is_torch_nn_exactly(classes):
    ours, theirs = _twins(*classes, 4, H)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert "forget_bias" not in repr(ours)


def test_reset_parameters_applies_it_again_and_the_step_reads_it():
    lstm = fusedrnn.LSTM(4, H, forget_bias=1.0)
    with torch.no_grad():
        lstm.bias_ih_l0.fill_(7)
    lstm.reset_parameters()
    assert torch.equal(lstm.bias_ih_l0[FORGET], torch.ones(H))
    assert torch.equal(lstm.bias_hh_l0[FORGET], torch.zeros(H))
    # what the forward reads: a step from zero states with zero input weights has f = sigmoid(forget_bias),
    # so with i*g = 0 (zero input and recurrent weights) c stays c0 * sigmoid(1)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            getattr(lstm, name).zero_()
        lstm.bias_ih_l0[2 * H:3 * H] = 0  # g = tanh(0) = 0
        lstm.bias_hh_l0[2 * H:3 * H] = 0
    c0 = torch.randn(1, 2, H)
    _, (_, c1) = lstm(torch.zeros(1, 2, 4), (torch.zeros(1, 2, H), c0))
    torch.testing.assert_close(c1, c0 * torch.sigmoid(torch.tensor(1.0)))


def test_without_biases_there_is_nothing_to_set():
    lstm = fusedrnn.LSTM(4, H, bias=False, forget_bias=1.0)
    assert not any("bias" in name for name, _ in lstm.named_parameters())


@pytest.mark.parametrize("bad", ["1.0", True, [1.0]])
def test_bad_values_name_the_argument(bad):
    with pytest.raises(TypeError, match="forget_bias"):
        fusedrnn.LSTM(4, H, forget_bias=bad)
    with pytest.raises(TypeError, match="forget_bias"):
        fusedrnn.LSTMCell(4, H, forget_bias=bad)
