"""torch.compile(fullgraph=True) on a model holding fusedrnn modules and a cell:
no graph breaks, and the same forward and backward as eager.

One Inductor compile (forward and backward graphs): about 10-40 s on 2 cores.
"""

from __future__ import annotations

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
