"""fusedrnn.revert: fusedrnn's layers swapped back for torch.nn's in place, the inverse of fusedrnn.convert."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B, T = 3, 6, 2, 4


class LayerNormLSTM(nn.LSTM):
    """A user's subclass with its own forward and attribute: revert gives it back its own class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = nn.LayerNorm(self.hidden_size * (2 if self.bidirectional else 1))
        self.label = "encoder"

    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return self.norm(out), state


class Model(nn.Module):
    """Every torch.nn recurrent class nested in containers and custom modules, one of them shared."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(I, I), nn.Tanh())
        self.encoders = nn.ModuleList([
            LayerNormLSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25),
            nn.LSTM(2 * H, H, proj_size=2),
        ])
        self.gru = nn.GRU(2, H, bias=False, bidirectional=True)
        self.stack = nn.Sequential(nn.Sequential(nn.RNN(2 * H, H, 2, "relu")))
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(H, H), "gru": nn.GRUCell(H, H, bias=False),
                                    "rnn": nn.RNNCell(H, H, nonlinearity="relu")})
        self.shared = self.cells["gru"]

    def forward(self, x):
        y, _ = self.encoders[0](self.embed(x))
        y, _ = self.encoders[1](y.transpose(0, 1))
        y, _ = self.gru(y)
        y, h = self.stack[0][0](y)
        hc = self.cells["lstm"](y[-1])
        return y, self.cells["rnn"](self.shared(hc[0], h[-1])) + hc[1]


def run(model, x):
    with torch.no_grad():
        return model(x)


def fused_modules(model):
    return [name for name, m in model.named_modules()
            if isinstance(m, (fusedrnn.modules.FusedRNNBase, fusedrnn.cell_modules.FusedRNNCellBase))]


def test_convert_revert_convert_round_trip_keeps_weights_settings_and_outputs():
    model = Model().double()
    model.stack.train()  # a training flag that differs from its parent's, kept by both swaps
    model.eval()
    model.stack[0][0].train()
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch_out = run(model, x)
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hook_calls = []
    model.gru.register_forward_hook(lambda *args: hook_calls.append("gru"))

    fusedrnn.convert(model)
    assert len(fused_modules(model)) == 7  # named_modules lists the shared cell once
    fused_out = run(model, x)

    returned = fusedrnn.revert(model)
    assert returned is model and fused_modules(model) == []
    assert type(model.encoders[0]) is LayerNormLSTM and model.encoders[0].label == "encoder"
    assert [type(m) for m in (model.encoders[1], model.gru, model.stack[0][0])] == [nn.LSTM, nn.GRU, nn.RNN]
    assert [type(m) for m in model.cells.values()] == [nn.LSTMCell, nn.GRUCell, nn.RNNCell]
    assert model.shared is model.cells["gru"], "a shared module must stay one module"
    # the same Parameter objects, so optimizers holding them stay valid; torch.nn's flat-weight cache sees them
    assert all(p is params[name] for name, p in model.named_parameters())
    assert all(w is getattr(model.gru, name) for w, name in zip(model.gru._flat_weights, model.gru._flat_weights_names))
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    lstm = model.encoders[0]
    assert (lstm.num_layers, lstm.bidirectional, lstm.batch_first, lstm.dropout) == (2, True, True, 0.25)
    assert model.encoders[1].proj_size == 2 and model.stack[0][0].nonlinearity == "relu"
    assert model.gru.bias is False and model.cells["rnn"].nonlinearity == "relu"
    assert not model.training and model.stack[0][0].training and not model.gru.training
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert not hasattr(model.gru, "backend")
    # torch.nn computes again: its own outputs, to the bit
    hook_calls.clear()
    for got, want in zip(run(model, x), torch_out):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert hook_calls == ["gru"], "the forward hook did not move back with the module"

    fusedrnn.convert(model)
    assert len(fused_modules(model)) == 7  # named_modules lists the shared cell once
    for got, want in zip(run(model, x), fused_out):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_model_that_is_itself_a_layer_is_returned_reverted(close):
    lstm = fusedrnn.LSTM(I, H, 2, batch_first=True).float()
    x = torch.randn(B, T, I)
    before = run(lstm, x)
    back = fusedrnn.revert(lstm)
    assert type(back) is nn.LSTM and back.weight_hh_l1 is lstm.weight_hh_l1
    for got, want in zip(torch.utils._pytree.tree_leaves(run(back, x)), torch.utils._pytree.tree_leaves(before)):
        close(got, want)


def test_gradients_flow_to_the_same_parameters_after_revert():
    model = nn.Sequential(fusedrnn.GRU(I, H))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fusedrnn.revert(model)
    before = model[0].weight_ih_l0.detach().clone()
    model[0](torch.randn(T, B, I))[0].sum().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight_ih_l0, before), "the optimizer lost the reverted module's parameters"


def test_recurrent_of_a_torch_cell_reverts_and_pyramid_levels_revert(close):
    model = nn.ModuleDict({"rec": fusedrnn.Recurrent("rnn", I, H, mode="relu"),
                           "pyramid": fusedrnn.PyramidLSTM(I, H, num_layers=2)})
    x = torch.randn(T, B, I)
    before = run(model["pyramid"], x).output
    fusedrnn.revert(model)
    assert type(model["rec"]) is nn.RNN and model["rec"].nonlinearity == "relu"
    assert all(type(level) is nn.LSTM for level in model["pyramid"].layers)
    close(run(model["pyramid"], x).output, before)


class OwnFusedLSTM(fusedrnn.LSTM):
    """A subclass of fusedrnn's class itself: no torch.nn class to become."""


@pytest.mark.parametrize("make, feature", [
    (lambda: fusedrnn.LSTM(I, H, peephole=True), r"peephole connections \(weight_ch_l\*\), which torch.nn.LSTM lacks"),
    (lambda: fusedrnn.LSTMCell(I, H, peephole=True), r"peephole connections \(weight_ch\)"),
    (lambda: fusedrnn.GRU(I, H, reset_after=False), r"reset_after=False \(the original GRU"),
    (lambda: fusedrnn.GRUCell(I, H, reset_after=False), r"reset_after=False"),
    (lambda: fusedrnn.Recurrent("gru", I, H, mode="reset_before"), r"reset_after=False"),
    (lambda: OwnFusedLSTM(I, H), r"OwnFusedLSTM subclasses fusedrnn's own"),
], ids=["LSTM-peephole", "LSTMCell-peephole", "GRU-reset_before", "GRUCell-reset_before", "Recurrent", "subclass"])
def test_what_torch_nn_lacks_raises_naming_the_path_and_the_feature_and_changes_nothing(make, feature):
    model = nn.Sequential(nn.Linear(I, I), nn.ModuleDict({"ok": fusedrnn.GRU(I, H), "bad": make()}))
    before = dict(model.named_modules())
    with pytest.raises(ValueError, match=rf"fusedrnn.revert: .*1\.bad \([\w.]+\): .*{feature}.*Nothing was changed"):
        fusedrnn.revert(model)
    assert dict(model.named_modules()) == before  # the convertible one was not reverted either


def test_parametrized_layer_is_refused():
    lstm = fusedrnn.LSTM(I, H)
    parametrize.register_parametrization(lstm, "weight_hh_l0", nn.Identity())
    with pytest.raises(ValueError, match=r"<model> .*parametrized with torch.nn.utils.parametrize"):
        fusedrnn.revert(lstm)


def test_reverted_is_a_deep_copy_safe_torch_nn_module(close):
    """What torch.nn's machinery does to its modules works on a reverted one (deepcopy, state_dict loading, _apply)."""
    model = fusedrnn.revert(fusedrnn.LSTM(I, H, proj_size=2))
    copied = copy.deepcopy(model).double()
    assert copied._flat_weights[0].dtype == torch.float64  # torch's cache follows _apply
    fresh = nn.LSTM(I, H, proj_size=2)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(T, B, I)
    close(run(fresh, x)[0], run(model, x)[0])


def test_revert_warns_nothing():
    """The modules revert builds to read settings from are not the user's: their warnings are not given again."""
    with pytest.warns(UserWarning, match="dropout"):
        lstm = fusedrnn.LSTM(I, H, dropout=0.5)  # torch.nn's warning, at construction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(fusedrnn.revert(lstm)) is nn.LSTM
