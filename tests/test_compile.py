"""torch.compile(fullgraph=True) on a model holding fusedrnn modules and a cell:
no graph breaks, and the same forward and backward as eager.

One Inductor compile (forward and backward graphs): about 10-40 s on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread")

I, H, B, T = 3, 7, 2, 5


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, proj_size=4)
        self.middle = fusedrnn.GRU(8, H, reset_after=False)
        self.decoder = fusedrnn.LSTMCell(H, H, peephole=True)
        self.head = nn.Linear(H, 2)

    def forward(self, x, h0, c0):
        y, (h, c) = self.encoder(x, (h0, c0))
        z, g = self.middle(y.transpose(0, 1))
        state = (g[0], c[-1].new_zeros(g.shape[1], H))
        for t in range(z.shape[0]):  # unrolled by dynamo: T is static
            state = self.decoder(z[t], state)
        return self.head(state[0]), h, c


@pytest.fixture
def model_and_inputs(quiet_backend_fallback):
    model = Tagger()
    x = torch.randn(B, T, I)
    h0, c0 = torch.randn(4, B, 4), torch.randn(4, B, H)
    model(x, h0, c0)  # resolve backends (and warn, once) outside the compiled region
    return model, (x, h0, c0)


def forward_backward(fn, model, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [*leaves, *model.parameters()])
    return outs, grads


def test_no_graph_breaks(model_and_inputs):
    model, inputs = model_and_inputs
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(*inputs)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def test_fullgraph_compile_matches_eager(model_and_inputs, close):
    model, inputs = model_and_inputs
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    expected, expected_grads = forward_backward(model, model, inputs)
    actual, actual_grads = forward_backward(compiled, model, inputs)
    for a, e in zip(actual, expected):
        close(a, e, torch.float32)
    names = ["x", "h0", "c0"] + [n for n, _ in model.named_parameters()]
    for name, a, e in zip(names, actual_grads, expected_grads):
        close(a, e, torch.float32, msg=f"gradient of {name}")


# ----------------------------------------------------------------------------
# fusedrnn's classes subclass torch.nn's RNNs, which Dynamo refuses unless allow_rnn is set:
# fusedrnn._dynamo_compat sets it for fusedrnn's instances only.  These compile with the
# "eager" backend (Dynamo's capture, no Inductor): the patch acts on the capture.
# ----------------------------------------------------------------------------


class LayerNormLSTM(nn.LSTM):
    """A user subclass; converted, it derives from fusedrnn.LSTM (fusedrnn.convert)."""

    def forward(self, input, hx=None):
        out, state = super().forward(input, hx)
        return nn.functional.layer_norm(out, out.shape[-1:]), state


class Holder(nn.Module):
    """A model holding one recurrent module, called on a sequence (layers) or a step (cells)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out = self.rnn(x if isinstance(self.rnn, nn.RNNBase) else x[0])
        return out[0] if isinstance(out, tuple) else out


EACH_CLASS = {
    "LSTM": lambda: fusedrnn.LSTM(I, H, num_layers=2, proj_size=2),
    "GRU": lambda: fusedrnn.GRU(I, H, bidirectional=True),
    "RNN": lambda: fusedrnn.RNN(I, H, nonlinearity="relu"),
    "LSTMCell": lambda: fusedrnn.LSTMCell(I, H),
    "GRUCell": lambda: fusedrnn.GRUCell(I, H),
    "RNNCell": lambda: fusedrnn.RNNCell(I, H),
    "converted_subclass": lambda: fusedrnn.convert(LayerNormLSTM(I, H)),
}


@pytest.mark.parametrize("make", list(EACH_CLASS.values()), ids=list(EACH_CLASS))
def test_fullgraph_capture_of_each_class(make, quiet_backend_fallback, close):
    model = Holder(make().double())
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = model(x)
    torch._dynamo.reset()
    actual = torch.compile(model, fullgraph=True, backend="eager")(x)
    close(actual, expected)


def lstm_holder():
    return Holder(nn.LSTM(I, H))


def test_torch_nn_lstm_is_still_refused_by_dynamo():
    """The patch does not leak: torch.nn's own LSTM compiles as it would without fusedrnn."""
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(lstm_holder(), fullgraph=True, backend="eager")(torch.randn(T, B, I))
    assert torch._dynamo.config.allow_rnn is False


def test_without_the_patch_fusedrnn_modules_are_refused_like_torch_nn(monkeypatch, quiet_backend_fallback):
    """What the patch is for: Dynamo's unpatched wrap_module refuses fusedrnn's LSTM too."""
    from torch._dynamo.variables.builder import VariableBuilder

    assert getattr(VariableBuilder.wrap_module, "_fusedrnn_allows_fused_rnns", False)
    monkeypatch.setattr(VariableBuilder, "wrap_module", VariableBuilder.wrap_module.__wrapped__)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(Holder(fusedrnn.LSTM(I, H)), fullgraph=True, backend="eager")(torch.randn(T, B, I))


def test_patch_warns_and_changes_nothing_when_dynamo_is_not_as_expected():
    from fusedrnn import _dynamo_compat

    changed_dynamo = types.SimpleNamespace(VariableBuilder=type("VariableBuilder", (), {}))
    with pytest.warns(RuntimeWarning, match="graph-break at fusedrnn's LSTM/GRU/RNN"):
        assert _dynamo_compat._patch(changed_dynamo) is False
    assert vars(changed_dynamo.VariableBuilder).get("wrap_module") is None


def test_importing_fusedrnn_imports_no_dynamo_and_patches_it_when_imported():
    """In a fresh interpreter: the meta-path hook patches Dynamo's builder when it is first imported."""
    code = (
        "import sys, fusedrnn\n"
        "assert 'torch._dynamo' not in sys.modules, 'fusedrnn imported torch._dynamo'\n"
        "from torch._dynamo.variables.builder import VariableBuilder\n"
        "print(getattr(VariableBuilder.wrap_module, '_fusedrnn_allows_fused_rnns', False))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
