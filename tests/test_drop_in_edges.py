"""Drop-in behaviour at the edges users reach (issue 12, items 3, 4, 6 and 7): in-place edits of
outputs, the meta device, empty and degenerate sizes, and torch.nn's exception types.

Every test runs the same call on the torch.nn twin and on fusedrnn (each backend that runs
here) and compares: the same values (float64, tolerance 1e-10 relative), the same shapes, or the
same exception type.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

BACKENDS = ["cpu", "reference"]
FAMILIES = ["LSTM", "GRU", "RNN"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]
RTOL = 1e-10  # float64 against float64: only summation order differs


def twins(name: str, *args, backend: str, **kwargs):
    """(torch.nn module, fusedrnn module with the same weights), float64."""
    torch_module = getattr(nn, name)(*args, **kwargs).double()
    ours = getattr(fusedrnn, name)(*args, backend=backend, **kwargs).double()
    ours.load_state_dict(torch_module.state_dict())
    return torch_module, ours


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL)


def outcome(fn):
    """The exception type ``fn`` raises, or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    return None


# ----------------------------------------------------------------------------
# 3. in-place edits of outputs
# ----------------------------------------------------------------------------

EDITS = {
    "relu_": lambda out, extra: out.relu_(),
    "masked_fill_": lambda out, extra: out.masked_fill_(extra > 0, 0.0),
    "iadd": lambda out, extra: out.add_(extra),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("name", FAMILIES)
def test_output_edited_in_place_gives_torch_gradients(name, edit, packed, bidirectional, backend):
    torch_module, ours = twins(name, 3, 5, num_layers=2, bidirectional=bidirectional, backend=backend)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 3])
    width = 10 if bidirectional else 5
    results = []
    for module in (torch_module, ours):
        xin = x.clone().requires_grad_()
        inp = pack_padded_sequence(xin, lengths, enforce_sorted=False) if packed else xin
        out, _ = module(inp)
        data = out.data if packed else out
        extra = torch.linspace(-1, 1, data.numel(), dtype=torch.float64).reshape(data.shape)
        EDITS[edit](data, extra)
        (data * extra.cos()).sum().backward()
        results.append((data.detach(), xin.grad, [p.grad for p in module.parameters()]))
    (out_t, gx_t, gw_t), (out_f, gx_f, gw_f) = results
    assert out_f.shape == (out_t.shape[0], width) if packed else out_f.shape == out_t.shape
    assert_close(out_f, out_t)
    assert_close(gx_f, gx_t)
    for a, b in zip(gw_f, gw_t):
        assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CELLS)
def test_cell_state_edited_in_place_gives_torch_gradients(name, backend):
    """torch.nn's RNNCell raises on this edit (its tanh saved the output); the answer it stands
    for is that of the out-of-place edit, which torch.nn computes here."""
    torch_cell, ours = twins(name, 3, 4, backend=backend)
    x = torch.randn(2, 3, dtype=torch.float64)
    grads = []
    for cell in (torch_cell, ours):
        xin = x.clone().requires_grad_()
        state = cell(xin)
        if cell is ours:
            (state[0] if isinstance(state, tuple) else state).relu_()
        else:
            state = (state[0].relu(), state[1]) if isinstance(state, tuple) else state.relu()
        h2 = cell(xin, state)
        h2 = h2[0] if isinstance(h2, tuple) else h2
        h2.sum().backward()
        grads.append([xin.grad] + [p.grad for p in cell.parameters()])
    for a, b in zip(*grads):
        assert_close(b, a)


# ----------------------------------------------------------------------------
# 4. meta device
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("name", FAMILIES)
def test_meta_module_gives_torch_shapes_then_materialises(name, backend):
    kwargs = dict(num_layers=2, bidirectional=True)
    torch_meta = getattr(nn, name)(4, 6, device="meta", **kwargs)
    ours = getattr(fusedrnn, name)(4, 6, device="meta", backend=backend, **kwargs)
    x = torch.empty(5, 3, 4, device="meta", requires_grad=True)
    out_t, h_t = torch_meta(x)
    out_f, h_f = ours(x)
    assert out_f.device.type == "meta" and out_f.shape == out_t.shape
    for a, b in zip(h_f if isinstance(h_f, tuple) else (h_f,), h_t if isinstance(h_t, tuple) else (h_t,)):
        assert a.device.type == "meta" and a.shape == b.shape
    out_f.sum().backward()
    assert x.grad.shape == x.shape and ours.weight_hh_l1_reverse.grad.device.type == "meta"
    # how large models are built: meta, then to_empty and reset_parameters
    ours.to_empty(device="cpu")
    ours.reset_parameters()
    ours = ours.double()
    torch_module = getattr(nn, name)(4, 6, **kwargs).double()
    torch_module.load_state_dict(ours.state_dict())
    xc = torch.randn(5, 3, 4, dtype=torch.float64)
    assert_close(ours(xc)[0], torch_module(xc)[0])


@pytest.mark.parametrize("name", CELLS)
def test_meta_cell(name):
    torch_out = getattr(nn, name)(4, 6, device="meta")(torch.empty(3, 4, device="meta"))
    our_out = getattr(fusedrnn, name)(4, 6, device="meta")(torch.empty(3, 4, device="meta"))
    for a, b in zip(our_out if isinstance(our_out, tuple) else (our_out,),
                    torch_out if isinstance(torch_out, tuple) else (torch_out,)):
        assert a.device.type == "meta" and a.shape == b.shape


@pytest.mark.parametrize("name", FAMILIES + CELLS)
def test_meta_input_to_cpu_module_raises_as_torch(name):
    x = torch.empty(5, 3, 4, device="meta") if name in FAMILIES else torch.empty(3, 4, device="meta")
    expected = outcome(lambda: getattr(nn, name)(4, 6)(x))
    assert expected is RuntimeError
    with pytest.raises(RuntimeError, match="device|is on"):
        getattr(fusedrnn, name)(4, 6)(x)


# ----------------------------------------------------------------------------
# 6. degenerate sizes
# ----------------------------------------------------------------------------

EMPTY_SEQUENCES = {
    "T=0": (0, 3),
    "T=0,B=0": (0, 0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", sorted(EMPTY_SEQUENCES))
@pytest.mark.parametrize("name", FAMILIES)
def test_zero_length_sequence_raises_as_torch(name, shape, backend):
    torch_module, ours = twins(name, 4, 6, backend=backend)
    x = torch.randn(*EMPTY_SEQUENCES[shape], 4, dtype=torch.float64)
    for inp in (x, x[:, 0] if x.shape[1] else x.reshape(0, 4)):  # batched, unbatched
        expected = outcome(lambda: torch_module(inp))
        assert expected is RuntimeError
        with pytest.raises(expected, match="sequence length"):
            ours(inp)


def run_and_differentiate(module, inp, xin):
    out, state = module(inp)
    states = state if isinstance(state, tuple) else (state,)
    data = out.data if isinstance(out, PackedSequence) else out
    loss = data.sum() + sum(s.sum() for s in states)
    grads = torch.autograd.grad(loss, [xin, *module.parameters()], allow_unused=True)
    return [data, *states], grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "batch_first", "packed[0]"])
@pytest.mark.parametrize("name", FAMILIES)
def test_empty_batch_as_torch(name, layout, backend):
    torch_module, ours = twins(name, 4, 6, num_layers=2, bidirectional=True, backend=backend,
                               batch_first=layout == "batch_first")
    x = torch.randn((5, 0, 4) if layout != "batch_first" else (0, 5, 4), dtype=torch.float64)
    results = []
    for module in (torch_module, ours):
        xin = x.clone().requires_grad_() if layout != "packed[0]" else torch.zeros(0, 4, dtype=torch.float64,
                                                                                 requires_grad=True)
        inp = xin if layout != "packed[0]" else PackedSequence(xin, torch.tensor([0]))
        results.append(run_and_differentiate(module, inp, xin))
    (outs_t, grads_t), (outs_f, grads_f) = results
    for a, b in zip(outs_f, outs_t):
        assert a.shape == b.shape
    for a, b in zip(grads_f, grads_t):
        if b is None:  # torch.nn leaves unused weights without a gradient; zeros are the same derivative
            assert a is None or not a.any()
        else:
            assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sizes", [(4, 0, 3), (0, 3, 2), (4, 3, 0)], ids=["H=0", "I=0", "B=0"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_degenerate_sizes_as_torch(name, sizes, backend):
    input_size, hidden_size, batch = sizes
    torch_cell, ours = twins(name, input_size, hidden_size, backend=backend)
    x = torch.randn(batch, input_size, dtype=torch.float64)
    for inp in (x, x[0]) if batch else (x,):  # batched, unbatched
        results = []
        for cell in (torch_cell, ours):
            xin = inp.clone().requires_grad_()
            state = cell(xin)
            states = state if isinstance(state, tuple) else (state,)
            loss = sum((s * torch.arange(s.numel(), dtype=s.dtype).reshape(s.shape)).sum() for s in states)
            grads = torch.autograd.grad(loss, [xin, *cell.parameters()], allow_unused=True)
            results.append((states, grads))
        (states_t, grads_t), (states_f, grads_f) = results
        for a, b in zip(states_f, states_t):
            assert_close(a, b)
        for a, b in zip(grads_f, grads_t):
            assert_close(a, torch.zeros_like(a) if b is None else b)


# ----------------------------------------------------------------------------
# 7. exception types and names
# ----------------------------------------------------------------------------


def test_lstm_cell_given_one_state_raises_runtime_error_as_torch():
    x, h = torch.randn(2, 4), torch.randn(2, 3)
    expected = outcome(lambda: nn.LSTMCell(4, 3)(x, (h,)))
    assert expected is RuntimeError
    with pytest.raises(RuntimeError, match="two hidden states"):
        fusedrnn.LSTMCell(4, 3)(x, (h,))


@pytest.mark.parametrize("name", FAMILIES)
def test_wrong_shaped_weight_is_named(name):
    """torch.nn computes something with a weight_ih_l0 of the wrong width (oneDNN reads past the
    input on the CPU); fusedrnn names the parameter."""
    module = getattr(fusedrnn, name)(4, 3, num_layers=2)
    module.weight_ih_l1 = nn.Parameter(torch.randn(module.weight_ih_l1.shape[0], 5))
    with pytest.raises(RuntimeError, match=r"weight_ih_l1 has shape \[\d+, 5\]"):
        module(torch.randn(2, 2, 4))


@pytest.mark.parametrize("name", CELLS)
def test_cell_wrong_shaped_weight_is_named(name):
    cell = getattr(fusedrnn, name)(4, 3)
    cell.weight_hh = nn.Parameter(torch.randn(cell.weight_hh.shape[0], 2))
    with pytest.raises(RuntimeError, match=r"weight_hh has shape"):
        cell(torch.randn(2, 4))


@pytest.mark.parametrize("name", FAMILIES)
def test_subclass_permute_hidden_is_called_as_torch_calls_it(name):
    """torch.nn's forward reorders packed states through ``self.permute_hidden``; a subclass that
    overrides it (to log, or to keep its own state layout) sees the same calls on fusedrnn."""

    def counting(base):
        class Counting(base):
            def permute_hidden(self, hx, permutation):
                self.calls = getattr(self, "calls", 0) + (permutation is not None)
                return super().permute_hidden(hx, permutation)

        return Counting

    torch_module = counting(getattr(nn, name))(3, 4).double()
    ours = counting(getattr(fusedrnn, name))(3, 4).double()
    ours.load_state_dict(torch_module.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    h = torch.randn(1, 3, 4, dtype=torch.float64)
    hx = (h, torch.randn_like(h)) if name == "LSTM" else h
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    out_t, state_t = torch_module(packed, hx)
    out_f, state_f = ours(packed, hx)
    assert ours.calls == torch_module.calls == 2
    assert_close(out_f.data, out_t.data)
    for a, b in zip(state_f if name == "LSTM" else (state_f,), state_t if name == "LSTM" else (state_t,)):
        assert_close(a, b)
