"""TorchScript and eager-mode dynamic quantization on models holding fusedrnn's layers (README.md, "Deployment").

TorchScript: ``torch.jit.script`` and ``torch.jit.trace`` (its default check on) stop with one RuntimeError
naming ``fusedrnn.revert`` (fusedrnn/torchscript.py says why refusing serves users better than a program
that runs only in Python with the tracing-time backend frozen in); after ``revert`` both compile, and the
compiled model computes what the fusedrnn model computed.

Quantization: ``quantize_dynamic`` with fusedrnn's classes in the spec gives torch's quantized modules,
the very result of the same model written with torch.nn (compared bitwise); where torch has no quantized
module the layer stays float32 with a warning; a spec naming only torch.nn's classes leaves fusedrnn's
layers as they were (never a wrong or broken model).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic

import fusedrnn

pytestmark = [pytest.mark.usefixtures("single_thread", "quiet_backend_fallback"),
              # torch.jit and torch.ao.quantization announce their deprecation on use
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*TorchScript.*:UserWarning")]

I, H, B, T = 4, 6, 3, 5


class Net(nn.Module):
    """torch.nn's recurrent layers and cells inside ordinary modules, as a model a user scripts or quantizes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(I, I)
        self.encoder = nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.middle = nn.GRU(2 * H, H)
        self.top = nn.RNN(H, H, nonlinearity="relu")
        self.cells = nn.ModuleList([nn.LSTMCell(H, H), nn.GRUCell(H, H), nn.RNNCell(H, H)])

    def forward(self, x):
        y, _ = self.encoder(self.embed(x))
        y, _ = self.middle(y.transpose(0, 1))
        y, h = self.top(y)
        h1, c1 = self.cells[0](y[-1])
        g = self.cells[1](h1)
        return y, self.cells[2](g) + c1


def twins():
    """The same model twice, with the same weights: torch.nn's layers, and fusedrnn's (converted)."""
    torch_model = Net().eval()
    fused_model = fusedrnn.convert(copy.deepcopy(torch_model))
    assert isinstance(fused_model.encoder, fusedrnn.LSTM) and isinstance(fused_model.cells[1], fusedrnn.GRUCell)
    return torch_model, fused_model


def outputs(model, x):
    with torch.no_grad():
        return model(x)


# -- TorchScript ---------------------------------------------------------------------------------------------


def test_script_refuses_with_one_error_naming_revert():
    _, model = twins()
    with pytest.raises(RuntimeError, match=r"^torch\.jit\.script: LSTM: .*fusedrnn\.revert\(model\)") as info:
        torch.jit.script(model)
    assert info.value.__cause__ is None and info.value.__context__ is None  # the error itself, not a compiler's
    assert isinstance(model.encoder, fusedrnn.LSTM), "torch.jit.script changed the model it refused"
    for module in (fusedrnn.GRUCell(I, H), fusedrnn.PyramidLSTM(I, H, num_layers=2)):
        with pytest.raises(RuntimeError, match=r"fusedrnn\.revert\(model\)"):
            torch.jit.script(module)


@pytest.mark.parametrize("make, example", [
    (lambda: twins()[1], lambda: torch.randn(B, T, I)),
    (lambda: fusedrnn.LSTMCell(I, H), lambda: torch.randn(B, I)),
    (lambda: fusedrnn.GRU(I, H, reset_after=False), lambda: torch.randn(T, B, I)),
], ids=["model", "LSTMCell", "GRU-reset_before"])
def test_trace_refuses_with_one_error_naming_revert(make, example):
    # torch.jit.trace's default check_trace=True: before, the check failed on the op's for_backward flag
    with pytest.raises(RuntimeError, match=r"^torch\.jit\.trace: .*fusedrnn\.revert\(model\)"):
        torch.jit.trace(make(), (example(),))


def test_trace_of_the_functional_api_refuses_too():
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)

    def run(x):
        return fusedrnn.functional.lstm_layer(x, None, None, w_ih, w_hh).out

    with pytest.raises(RuntimeError, match="fusedrnn.revert"):
        torch.jit.trace(run, (torch.randn(T, B, I),))


def test_after_revert_script_and_trace_compile_the_same_model(close):
    torch_model, fused_model = twins()
    x = torch.randn(B, T, I)
    expected = outputs(fused_model, x)
    close(outputs(torch_model, x)[1], expected[1], msg="fusedrnn against torch.nn before revert")
    fusedrnn.revert(fused_model)
    scripted = torch.jit.script(fused_model)
    traced = torch.jit.trace(fused_model, (x,))  # check_trace on
    for compiled in (scripted, traced):
        for got, want in zip(outputs(compiled, x), expected):
            close(got, want)
    # the scripted program is not tied to the example's sizes
    longer = torch.randn(B + 1, T + 3, I)
    for got, want in zip(outputs(scripted, longer), outputs(torch_model, longer)):
        close(got, want)


# -- quantize_dynamic ------------------------------------------------------------------------------------------

FUSED_SPEC = {fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell, nn.Linear}
TORCH_SPEC = {nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.Linear}


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_fusedrnn_classes_quantize_as_torch_nn_does(dtype, close):
    torch_model, fused_model = twins()
    x = torch.randn(B, T, I)
    float_out = outputs(torch_model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.nn.RNN has no quantized module (the warning below)
        expected = quantize_dynamic(torch_model, TORCH_SPEC, dtype)
        quantized = quantize_dynamic(fused_model, FUSED_SPEC | {fusedrnn.RNN}, dtype)
    for name in ("encoder", "middle", "cells.0", "cells.1", "cells.2", "embed"):
        assert type(quantized.get_submodule(name)) is type(expected.get_submodule(name)), name
    assert type(quantized.encoder) is nnqd.LSTM and type(quantized.cells[2]) is nnqd.RNNCell
    # the same quantized modules from the same weights: the same numbers, to the bit
    for name, y in (("encoder", torch.randn(B, T, I)), ("middle", torch.randn(T, B, 2 * H)),
                    ("cells.0", torch.randn(B, H))):
        for got, want in zip(torch.utils._pytree.tree_leaves(outputs(quantized.get_submodule(name), y)),
                             torch.utils._pytree.tree_leaves(outputs(expected.get_submodule(name), y))):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    # the whole model: its float32 RNN is fusedrnn's in one and torch.nn's in the other (float32 tolerance)
    for got, want in zip(outputs(quantized, x), outputs(expected, x)):
        close(got, want)
    # and close to the float model: int8 weights (per-tensor) on these sizes stay within 0.05
    tolerance = 0.05 if dtype == torch.qint8 else 2e-3
    for got, want in zip(outputs(quantized, x), float_out):
        torch.testing.assert_close(got, want, rtol=0, atol=tolerance)


@pytest.mark.parametrize("make, reason", [
    (lambda: fusedrnn.RNN(I, H), "no dynamically quantized RNN"),
    (lambda: fusedrnn.LSTM(I, H, proj_size=2), "no projection"),
    (lambda: fusedrnn.LSTM(I, H, peephole=True), "peephole"),
    (lambda: fusedrnn.GRU(I, H, reset_after=False), "reset_after=False"),
    (lambda: fusedrnn.GRUCell(I, H, reset_after=False), "reset_after=False"),
], ids=["RNN", "LSTM-proj", "LSTM-peephole", "GRU-reset_before", "GRUCell-reset_before"])
def test_layers_torch_cannot_quantize_stay_float32_with_a_warning(make, reason):
    layer = make().eval()
    calls = []
    layer.register_forward_hook(lambda *args: calls.append(1))
    model = nn.Sequential(layer)
    x = torch.randn(T, B, I) if not isinstance(layer, nn.RNNCellBase) else torch.randn(B, I)
    before = outputs(model, x)
    with pytest.warns(UserWarning, match=f"stays float32.*{reason}"):
        quantized = quantize_dynamic(model, {type(layer)}, torch.qint8)
    assert type(quantized[0]) is type(layer)
    calls.clear()
    after = outputs(quantized, x)
    assert len(calls) == 1, "the forward hook was registered twice"
    for got, want in zip(torch.utils._pytree.tree_leaves(after), torch.utils._pytree.tree_leaves(before)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torch_nn_lstm_with_a_projection_quantizes_to_a_module_that_fails():
    """What fusedrnn's warning spares (README's Deployment table): torch's quantized LSTM has no projection."""
    quantized = quantize_dynamic(nn.Sequential(nn.LSTM(I, H, proj_size=2)), {nn.LSTM}, torch.qint8)
    assert type(quantized[0]) is nnqd.LSTM
    with pytest.raises(RuntimeError):
        quantized(torch.randn(T, B, I))


def test_specs_naming_torch_nn_leave_fusedrnn_layers_as_they_were():
    """torch matches the spec's classes exactly: fusedrnn's layers (instances of nn.LSTM, ...) are not
    selected by {nn.LSTM} nor by the default spec; they stay float32 and compute what they did."""
    _, fused_model = twins()
    assert isinstance(fused_model.encoder, nn.LSTM) and type(fused_model.encoder) is not nn.LSTM
    x = torch.randn(B, T, I)
    for spec in (None, TORCH_SPEC):
        model = copy.deepcopy(fused_model)
        without_linear = copy.deepcopy(model)
        without_linear.embed = nn.Identity()  # the one layer the spec does quantize, taken out to compare
        quantized = quantize_dynamic(model, spec, torch.qint8)
        assert type(quantized.embed) is nnqd.Linear
        assert type(quantized.encoder) is fusedrnn.LSTM and type(quantized.cells[0]) is fusedrnn.LSTMCell
        assert quantized.encoder.weight_ih_l0.dtype == torch.float32
        quantized.embed = nn.Identity()
        for got, want in zip(outputs(quantized, x), outputs(without_linear, x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
