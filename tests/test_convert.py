"""fusedrnn.convert: torch.nn's recurrent modules swapped in place, everything else kept."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B, T = 3, 6, 2, 4


class Decoder(nn.Module):
    """A custom module holding cells in a ModuleDict, stepped in its own loop."""

    def __init__(self):
        super().__init__()
        self.cells = nn.ModuleDict({
            "lstm": nn.LSTMCell(2 * H, H),
            "gru": nn.GRUCell(H, H, bias=False),
            "rnn": nn.RNNCell(H, H, nonlinearity="relu"),
        })

    def forward(self, context):
        h = c = context.new_zeros(context.shape[0], H)
        g = context.new_zeros(context.shape[0], H)
        outputs = []
        for _ in range(3):
            h, c = self.cells["lstm"](context, (h, c))
            g = self.cells["gru"](h, g)
            outputs.append(self.cells["rnn"](g))
        return torch.stack(outputs)


class Model(nn.Module):
    """LSTM / GRU / RNN nested in Sequential, ModuleList and custom modules, plus non-RNN layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(I, I), nn.Tanh())
        self.encoders = nn.ModuleList([
            nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3, dropout=0.3),
            nn.GRU(6, H, batch_first=True, bias=False),
        ])
        self.stack = nn.Sequential(nn.Sequential(nn.RNN(H, H, 2, "relu")))
        self.decoder = Decoder()

    def forward(self, x):
        y, _ = self.encoders[0](self.embed(x))
        y, h = self.encoders[1](y.transpose(0, 1))
        y, _ = self.stack[0][0](y.transpose(0, 1))
        return y, self.decoder(torch.cat([y[-1], h[0]], dim=-1))


RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
# fusedrnn's modules are instances of RNN_TYPES too (they subclass torch.nn's)
FUSED_TYPES = (fusedrnn.modules.FusedRNNBase, fusedrnn.cell_modules.FusedRNNCellBase)


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def test_outputs_identical_before_and_after(close):
    model = Model().double().eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    before = outputs(model, x)
    params_before = dict(model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is left unconverted here
        returned = fusedrnn.convert(model)
    assert returned is model
    remaining = [name for name, m in model.named_modules() if isinstance(m, RNN_TYPES) and not isinstance(m, FUSED_TYPES)]
    assert remaining == []
    assert type(model.encoders[0]) is fusedrnn.LSTM and type(model.encoders[1]) is fusedrnn.GRU
    assert type(model.stack[0][0]) is fusedrnn.RNN and type(model.decoder.cells["rnn"]) is fusedrnn.RNNCell
    for a, b in zip(outputs(model, x), before):
        close(a, b)
    # the very same parameters, under the same names, in the same order
    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    assert all(params_after[n] is params_before[n] for n in params_before)


def test_settings_training_mode_dtype_and_requires_grad_are_kept():
    model = Model().double()
    model.encoders[1].eval()
    model.decoder.cells["gru"].weight_hh.requires_grad_(False)
    reprs = {name: repr(m) for name, m in model.named_modules() if isinstance(m, RNN_TYPES)}
    fusedrnn.convert(model, backend="reference")
    assert model.training and model.encoders[0].training and not model.encoders[1].training
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert not model.decoder.cells["gru"].weight_hh.requires_grad
    for name, m in model.named_modules():
        if name in reprs:
            assert m.backend == "reference"
            assert repr(m) == reprs[name][:-1] + ", backend='reference')"  # every constructor setting kept
    lstm = model.encoders[0]
    assert (lstm.num_layers, lstm.bidirectional, lstm.proj_size, lstm.dropout) == (2, True, 3, 0.3)
    assert model.encoders[1].batch_first and not model.encoders[1].bias
    assert model.stack[0][0].nonlinearity == "relu"


def test_gradients_and_optimizer_keep_working_after_convert(close):
    torch.manual_seed(0)
    model = Model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(T, B, I, dtype=torch.float64)
    reference = Model().double()
    reference.load_state_dict(model.state_dict())
    fusedrnn.convert(model)
    for m in (model, reference):
        m.eval()  # no dropout: the two must agree exactly
        y, d = m(x)
        (y.sum() + d.pow(2).sum()).backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        close(a.grad, b.grad, msg=name)
    optimizer.step()  # built before convert: still holds the model's parameters
    assert not torch.equal(model.encoders[0].weight_hh_l0, reference.encoders[0].weight_hh_l0)


def test_a_module_that_is_itself_recurrent_is_returned_converted(close):
    lstm = nn.LSTM(I, H, 2, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    expected = outputs(lstm, x)
    converted = fusedrnn.convert(lstm)
    assert type(converted) is fusedrnn.LSTM
    actual = outputs(converted, x)
    close(actual[0], expected[0])
    cell = fusedrnn.convert(nn.GRUCell(I, H))
    assert type(cell) is fusedrnn.GRUCell


def test_shared_module_is_replaced_once():
    shared = nn.GRU(I, H)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    fusedrnn.convert(model)
    assert model["a"] is model["b"][0] and type(model["a"]) is fusedrnn.GRU


class LayerNormLSTM(nn.LSTM):
    """A subclass with its own forward: converting it must keep the normalisation."""

    def forward(self, input, hx=None):
        out, state = super().forward(input, hx)
        return nn.functional.layer_norm(out, out.shape[-1:]), state


def test_subclasses_are_converted_keeping_their_forward(close):
    """(More client subclasses in test_client_patterns.py.)"""
    model = nn.Sequential(nn.LSTM(I, H), LayerNormLSTM(H, H), nn.Sequential(LayerNormLSTM(H, H))).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = model[2][0](model[1](model[0](x)[0])[0])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is left unconverted
        fusedrnn.convert(model)
    assert type(model[0]) is fusedrnn.LSTM
    # one generated class for both instances: LayerNormLSTM's methods first, fusedrnn's forward under them
    assert type(model[1]) is type(model[2][0])
    assert type(model[1]).__mro__[1:4] == (LayerNormLSTM, fusedrnn.LSTM, fusedrnn.modules.FusedRNNBase)
    assert isinstance(model[1], LayerNormLSTM) and isinstance(model[1], fusedrnn.LSTM)
    actual = model[2][0](model[1](model[0](x)[0])[0])[0]
    close(actual, expected)


def test_converting_twice_changes_nothing():
    model = nn.Sequential(nn.GRU(I, H), LayerNormLSTM(H, H))
    fusedrnn.convert(model, backend="reference")
    first = list(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fusedrnn.convert(model)
    assert all(a is b for a, b in zip(model, first))
    assert model[0].backend == "reference"  # fusedrnn's modules keep their settings


class ClashingLSTM(nn.LSTM):
    """A subclass whose own names are fusedrnn's internals: fusedrnn's forward would run them."""

    def _run_layers(self, *args):
        raise AssertionError("not a fusedrnn layer runner")


class BackendLSTM(nn.LSTM):
    """A subclass with an attribute of fusedrnn's name, another meaning."""

    def __init__(self, *args, backend="cudnn", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend


class CellLSTM(nn.LSTM):
    """A subclass with a submodule that fusedrnn's ``cell`` property would hide."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cell = nn.LSTMCell(H, H)


def test_subclasses_whose_names_clash_with_fusedrnn_are_left_alone():
    model = nn.Sequential(ClashingLSTM(I, H), BackendLSTM(I, H), CellLSTM(I, H))
    with pytest.warns(UserWarning) as record:
        fusedrnn.convert(model)
    message = " ".join(str(w.message) for w in record if "fusedrnn.convert" in str(w.message))
    assert "0 (" in message and "['_run_layers']" in message
    assert "1 (" in message and "'backend' = 'cudnn'" in message
    assert "2 (" in message and "['cell'] would be hidden by fusedrnn's LSTM" in message
    assert type(model[0]) is ClashingLSTM and type(model[1]) is BackendLSTM and type(model[2]) is CellLSTM
    assert type(model[2].cell) is fusedrnn.LSTMCell  # what it holds is converted all the same


def test_parametrized_module_is_left_alone():
    """torch.nn.utils.parametrize makes a subclass (ParametrizedLSTM): left alone, named."""
    lstm = nn.LSTM(I, H)
    nn.utils.parametrize.register_parametrization(lstm, "weight_hh_l0", nn.Identity())
    model = nn.Sequential(lstm)
    with pytest.warns(UserWarning, match="ParametrizedLSTM: parametrized with torch.nn.utils.parametrize"):
        fusedrnn.convert(model)
    assert model[0] is lstm


def test_module_whose_parameters_are_not_torch_layout_is_left_alone():
    """The old weight_norm replaces weight_hh_l0 by weight_hh_l0_g/_v on the module itself."""
    lstm = nn.LSTM(I, H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated, still used
        nn.utils.weight_norm(lstm, "weight_hh_l0")
    model = nn.Sequential(lstm)
    with pytest.warns(UserWarning, match="0 \\(torch.nn.modules.rnn.LSTM: its parameters .*weight_hh_l0_g"):
        fusedrnn.convert(model)
    assert model[0] is lstm


def test_forward_hooks_move_with_the_module():
    seen = []
    model = nn.Sequential(nn.GRU(I, H))
    handle = model[0].register_forward_hook(lambda m, args, out: seen.append(type(m)))
    fusedrnn.convert(model)
    model(torch.randn(T, B, I))
    assert seen == [fusedrnn.GRU]
    handle.remove()
    model(torch.randn(T, B, I))
    assert len(seen) == 1


def test_convert_does_not_draw_random_numbers():
    model = Model()
    state = torch.get_rng_state()
    fusedrnn.convert(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_backend_raises_before_changing_anything():
    model = nn.Sequential(nn.LSTM(I, H))
    with pytest.raises(ValueError, match="unknown fusedrnn backend"):
        fusedrnn.convert(model, backend="nope")
    assert type(model[0]) is nn.LSTM


class LearntInitialStateGRU(nn.GRU):
    """A subclass with an extra parameter (a learnt initial state), a buffer, a submodule (in eval
    mode while the model trains) and a method bound on the instance."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h0 = nn.Parameter(torch.randn(self.num_layers, 1, self.hidden_size))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.post = nn.Linear(self.hidden_size, self.hidden_size)
        self.post.eval()
        self.describe = self._describe

    def _describe(self):
        return self

    def forward(self, x):
        self.calls += 1
        out, h = super().forward(x, self.h0.expand(-1, x.size(1), -1).contiguous())
        return self.post(out), h


def test_a_subclass_keeps_its_parameters_buffers_submodules_and_attributes(close):
    original = LearntInitialStateGRU(I, H, num_layers=2).double()
    keep = copy.deepcopy(original)
    params = dict(original.named_parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    converted = fusedrnn.convert(original)
    assert isinstance(converted, fusedrnn.GRU) and isinstance(converted, LearntInitialStateGRU)
    assert list(converted.state_dict()) == list(keep.state_dict())  # h0 where it was, calls after
    assert all(p is params[n] for n, p in converted.named_parameters())  # the very same objects
    assert converted.training and not converted.post.training
    assert converted.describe() is converted  # rebound to the new module
    expected, actual = keep(x), converted(x)
    assert int(converted.calls) == 1
    for a, e in zip(actual, expected):
        close(a, e)
    (actual[0].sum() + actual[1].sum()).backward()
    (expected[0].sum() + expected[1].sum()).backward()
    close(converted.h0.grad, keep.h0.grad)
