"""fusedrnn.LSTM / GRU / RNN against their torch.nn twins, and the seed variants
against hand-written step loops.

Parity compares outputs, final states and the gradients of the input, the
initial states and every parameter (under a random upstream gradient on the
output and the final states), on copied weights.  The modules' parameters
themselves (construction, state_dict, serialisation, edits) are tested in
test_module_parameters.py, with the module pairs defined here.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, P, B, T = 3, 37, 5, 5, 4
LENGTHS = [2, 4, 1, 4, 3]  # unsorted, for PackedSequence(enforce_sorted=False)

# kind -> (torch class, fusedrnn class, constructor options)
KINDS = {
    "lstm": (nn.LSTM, fusedrnn.LSTM, {}),
    "lstm_proj": (nn.LSTM, fusedrnn.LSTM, {"proj_size": P}),
    "gru": (nn.GRU, fusedrnn.GRU, {}),
    "rnn_tanh": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "relu"}),
}


def make_pair(kind, dtype=torch.float64, **options):
    """A torch.nn module and its fusedrnn twin holding the same weights."""
    torch_cls, fused_cls, extra = KINDS[kind]
    kwargs = dict(extra, **options)
    reference = torch_cls(I, H, dtype=dtype, **kwargs)
    fused = fused_cls(I, H, dtype=dtype, **kwargs)
    fused.load_state_dict(reference.state_dict(), strict=True)
    return reference, fused


def initial_states(module, batch, dtype, unbatched=False):
    """Random (h0, c0) / h0 of the module's expected shapes."""
    d = 2 if module.bidirectional else 1
    hout = module.proj_size or module.hidden_size
    lead = (module.num_layers * d,) if unbatched else (module.num_layers * d, batch)
    h0 = torch.randn(*lead, hout, dtype=dtype)
    if isinstance(module, (nn.LSTM, fusedrnn.LSTM)):
        return (h0, torch.randn(*lead, module.hidden_size, dtype=dtype))
    return h0


def as_tuple(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def run(module, x, hx=None, lengths=None, seed=0):
    """Forward (packing ``x`` when ``lengths`` is given), then a random upstream gradient.

    Returns (output tensors, PackedSequence or None, gradients of x, the
    initial states and every parameter, in named_parameters order).
    """
    x = x.detach().clone().requires_grad_()
    states = None if hx is None else tuple(s.detach().clone().requires_grad_() for s in as_tuple(hx))
    inp = x if lengths is None else pack_padded_sequence(x, lengths, module.batch_first, enforce_sorted=False)
    arg = None if states is None else (states if isinstance(hx, tuple) else states[0])
    out, final = module(inp, arg)
    packed = out if isinstance(out, PackedSequence) else None
    results = [out.data if packed is not None else out, *as_tuple(final)]
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.dtype) for r in results]
    loss = sum((r * u).sum() for r, u in zip(results, upstream))
    leaves = [x, *(states or ()), *module.parameters()]
    grads = torch.autograd.grad(loss, leaves)
    return results, packed, grads


def assert_parity(ref, fused, x, hx, lengths, close, dtype):
    r_out, r_packed, r_grads = run(ref, x, hx, lengths)
    f_out, f_packed, f_grads = run(fused, x, hx, lengths)
    assert len(r_out) == len(f_out)
    for name, a, b in zip(["output", "h_n", "c_n"], f_out, r_out):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        close(a, b, dtype, msg=name)
    if lengths is not None:
        assert f_packed is not None, "a PackedSequence in must give a PackedSequence out"
        assert torch.equal(f_packed.batch_sizes, r_packed.batch_sizes)
        assert torch.equal(f_packed.sorted_indices, r_packed.sorted_indices)
        assert torch.equal(f_packed.unsorted_indices, r_packed.unsorted_indices)
    names = ["input"] + [f"state{i}" for i in range(len(as_tuple(hx)) if hx is not None else 0)]
    names += [n for n, _ in ref.named_parameters()]
    assert len(f_grads) == len(r_grads) == len(names)
    for name, a, b in zip(names, f_grads, r_grads):
        close(a, b, dtype, msg=f"gradient of {name}")


# ----------------------------------------------------------------------------
# The parity grid
# ----------------------------------------------------------------------------

GRID = list(itertools.product(KINDS, [1, 2, 3], [False, True], [False, True], [True, False], [False, True], [False, True]))


def grid_id(case):
    kind, layers, bidir, batch_first, bias, packed, with_state = case
    return "-".join([
        kind, f"L{layers}", "bi" if bidir else "uni", "bf" if batch_first else "tf", "bias" if bias else "nobias",
        "packed" if packed else "padded", "hx" if with_state else "nohx",
    ])


FLOAT32_GRID = [c for c in GRID if c[1] in (1, 3) and c[2] and not c[3] and c[4]]


def check_grid_case(case, dtype, close):
    kind, layers, bidir, batch_first, bias, packed, with_state = case
    ref, fused = make_pair(kind, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    hx = initial_states(ref, B, dtype) if with_state else None
    assert_parity(ref, fused, x, hx, LENGTHS if packed else None, close, dtype)


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_parity_float64(case, close):
    check_grid_case(case, torch.float64, close)


@pytest.mark.parametrize("case", FLOAT32_GRID, ids=[grid_id(c) for c in FLOAT32_GRID])
def test_parity_float32(case, close):
    check_grid_case(case, torch.float32, close)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_single_step_sequences(kind, packed, close):
    """T=1 (every length 1 when packed), two bidirectional layers."""
    ref, fused = make_pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(1, B, I, dtype=torch.float64)
    assert_parity(ref, fused, x, initial_states(ref, B, torch.float64), [1] * B if packed else None, close,
                  torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_unbatched_input(kind, with_state, batch_first, close):
    """2-D input [T, I] (batch_first is ignored, as in torch) with 2-D states."""
    ref, fused = make_pair(kind, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(T, I, dtype=torch.float64)
    hx = initial_states(ref, None, torch.float64, unbatched=True) if with_state else None
    assert_parity(ref, fused, x, hx, None, close, torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sorted_packed_sequence(kind, close):
    """enforce_sorted=True packs have no permutation (sorted_indices None), as torch returns them."""
    ref, fused = make_pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, sorted(LENGTHS, reverse=True), enforce_sorted=True)
    r_out, (r_h) = ref(packed)
    f_out, (f_h) = fused(packed)
    assert f_out.sorted_indices is None and f_out.unsorted_indices is None
    close(f_out.data, r_out.data)
    for a, b in zip(as_tuple(f_h), as_tuple(r_h)):
        close(a, b)


BACKEND_CASES = [("lstm_proj", 2, True, False, True, True, True), ("gru", 2, True, True, True, False, True),
                 ("rnn_relu", 1, False, False, False, True, False)]


# Triton runs on CPU tensors only under the interpreter, in the separate `-m triton` process
BACKEND_MARKS = {"triton": [pytest.mark.triton], "cuda": [pytest.mark.gpu]}


# the GPU backends compute in float32 (and 16-bit) by design: float64 is not theirs to run
GPU_BACKENDS = ("triton", "cuda")
BACKEND_DTYPES = [
    pytest.param(n, dtype, marks=BACKEND_MARKS.get(n, []), id=f"{n}-{str(dtype).split('.')[-1]}")
    for n in fusedrnn.backends.names()
    for dtype in ((torch.float32,) if n in GPU_BACKENDS else (torch.float64, torch.float32))
]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", BACKEND_CASES, ids=[grid_id(c) for c in BACKEND_CASES])
def test_parity_through_each_backend(backend, dtype, case, close):
    """The grid above runs whatever "auto" picks; here each backend by name, on a few cases."""
    why = fusedrnn.backends.unavailable_reason(backend)
    if why is not None:
        pytest.skip(f"backend {backend!r} is unavailable here: {why}")
    kind, layers, bidir, batch_first, bias, packed, with_state = case
    ref, fused = make_pair(kind, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    weights = fused._direction_weights(0, 0, None)
    why = fusedrnn.backends.get(backend).unsupported(fused.cell, x, weights)
    assert why is None, f"backend {backend!r} refuses {dtype} {x.device.type} tensors: {why}"
    fused.backend = backend
    hx = initial_states(ref, B, dtype) if with_state else None
    assert_parity(ref, fused, x, hx, LENGTHS if packed else None, close, dtype)


# ----------------------------------------------------------------------------
# Dropout between layers
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm_proj", "gru", "rnn_tanh"])
def test_dropout_masks_match_torch_on_cpu(kind, close):
    """On CPU torch.nn draws its masks with the same dropout op, in the same order: same seed, same output."""
    ref, fused = make_pair(kind, num_layers=3, bidirectional=True, dropout=0.4)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(11)
    expected = ref(x)
    torch.manual_seed(11)
    actual = fused(x)
    close(actual[0], expected[0])
    for a, b in zip(as_tuple(actual[1]), as_tuple(expected[1])):
        close(a, b)


def test_dropout_is_reproducible_off_in_eval_and_follows_the_attribute():
    _, fused = make_pair("lstm", num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(3)
    first = fused(x)[0]
    torch.manual_seed(3)
    assert torch.equal(fused(x)[0], first)
    torch.manual_seed(4)
    assert not torch.equal(fused(x)[0], first)  # a different seed, a different mask
    fused.eval()
    no_dropout = fused(x)[0]
    assert torch.equal(fused(x)[0], no_dropout)
    fused.train()
    fused.dropout = 0.0
    assert torch.equal(fused(x)[0], no_dropout)
    fused.dropout = 0.9
    assert not torch.allclose(fused(x)[0], no_dropout)


def test_packed_dropout_applies_to_packed_rows(close):
    ref, fused = make_pair("gru", num_layers=2, dropout=0.3)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    torch.manual_seed(5)
    expected = ref(packed)
    torch.manual_seed(5)
    actual = fused(packed)
    close(actual[0].data, expected[0].data)


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1") as torch_warnings:
        nn.LSTM(I, H, dropout=0.2)
    with pytest.warns(UserWarning, match="num_layers greater than 1") as fused_warnings:
        fusedrnn.LSTM(I, H, dropout=0.2)
    assert str(fused_warnings[0].message) == str(torch_warnings[0].message)
    assert fused_warnings[0].filename == __file__  # points at the caller


# ----------------------------------------------------------------------------
# Double backward, autocast, backend plumbing
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_double_backward_gradient_penalty(kind, close):
    ref, fused = make_pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)

    def penalised_grads(module):
        xi = x.clone().requires_grad_()
        out, _ = module(xi)
        first = torch.autograd.grad(out.pow(2).sum(), [xi, *module.parameters()], create_graph=True)
        penalty = sum(g.pow(2).sum() for g in first)
        return torch.autograd.grad(penalty, [xi, *module.parameters()])

    for a, b in zip(penalised_grads(fused), penalised_grads(ref)):
        close(a, b)


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
def test_autocast_runs_the_layers_in_the_autocast_dtype(kind):
    """Under CPU autocast (bfloat16) outputs are bfloat16, as torch.nn's LSTM/RNN give, with torch's
    accuracy (error against float64 within 2x torch's own + bf16 rounding); parameter grads stay float32."""
    ref, fused = make_pair(kind, torch.float32, num_layers=2)
    x = torch.randn(T, B, I)
    exact = fused.double()(x.double())[0]
    fused.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fused(x)
        ref_out, _ = ref(x)
    assert out.dtype == ref_out.dtype == torch.bfloat16
    ours, theirs = (out.double() - exact).abs().max(), (ref_out.double() - exact).abs().max()
    assert ours <= 2 * theirs + 2 ** -8
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())


def test_one_op_call_per_layer_direction_with_the_module_backend(monkeypatch):
    calls = []
    # the modules make layer's checks themselves and call the functional entry that makes none
    real_layer = fusedrnn.functional.run_checked

    def spy(cell, x, h0, c0, weights, batch_sizes=None, reverse=False, backend=None, *zoneout):
        calls.append((cell, reverse, backend, tuple(x.shape)))
        return real_layer(cell, x, h0, c0, weights, batch_sizes, reverse, backend, *zoneout)

    monkeypatch.setattr(fusedrnn.functional, "run_checked", spy)
    module = fusedrnn.GRU(I, H, 3, bidirectional=True, reset_after=False, backend="reference")
    module(torch.randn(T, B, I))
    assert [(c.mode, r, b) for c, r, b, _ in calls] == [("reset_before", r, "reference") for _ in range(3)
                                                       for r in (False, True)]
    assert [s for *_, s in calls] == [(T, B, I)] * 2 + [(T, B, 2 * H)] * 4  # whole sequences, never single steps


def test_backend_context_and_explicit_backend_agree(close):
    ref, fused = make_pair("lstm", num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with fusedrnn.use_backend("reference"):
        in_context = fused(x)[0]
    fused.backend = "reference"
    close(fused(x)[0], in_context)
    close(in_context, ref(x)[0])


# ----------------------------------------------------------------------------
# The seed variants against hand-written step loops
# ----------------------------------------------------------------------------

VARIANTS = {
    "lstm_peephole": (lambda **o: fusedrnn.LSTM(I, H, peephole=True, **o), "lstm", {}),
    "lstm_peephole_proj": (lambda **o: fusedrnn.LSTM(I, H, peephole=True, proj_size=P, **o), "lstm", {}),
    "gru_reset_before": (lambda **o: fusedrnn.GRU(I, H, reset_after=False, **o), "gru", {"reset_after": False}),
    "rnn_relu": (lambda **o: fusedrnn.RNN(I, H, nonlinearity="relu", **o), "rnn", {"nonlinearity": "relu"}),
}


def handwritten_stack(module, x, states, step):
    """The module's computation as plain loops over layers, directions and time steps (x: [T, B, I])."""
    directions = 2 if module.bidirectional else 1
    has_cell = isinstance(states, tuple)
    h0, c0 = states if has_cell else (states, None)
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = "_reverse" if direction else ""
            p = {stem: getattr(module, f"{stem}_l{layer}{suffix}", None)
                 for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch", "weight_hr")}
            index = layer * directions + direction
            h, c = h0[index], None if c0 is None else c0[index]
            out = [None] * x.shape[0]
            for t in (reversed(range(x.shape[0])) if direction else range(x.shape[0])):
                h, c = step(layer_input[t], h, c, p)
                out[t] = h
            outputs.append(torch.stack(out))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    return (layer_input, torch.stack(h_n)) + ((torch.stack(c_n),) if has_cell else ())


def variant_step(equations, family, options):
    if family == "lstm":
        return equations.lstm
    if family == "gru":
        return lambda x, h, c, p: (equations.gru(x, h, p, **options), None)
    return lambda x, h, c, p: (equations.rnn(x, h, p, **options), None)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_variant_matches_handwritten_loop(variant, bias, step_equations, close):
    build, family, options = VARIANTS[variant]
    module = build(num_layers=2, bidirectional=True, bias=bias, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = initial_states(module, B, torch.float64)
    results, _, grads = run(module, x, hx)
    expected_results = handwritten_stack(module, x, hx, variant_step(step_equations, family, options))
    for a, b in zip(results, expected_results):
        close(a, b)
    # the loop's gradients by autograd, under the same upstream gradient as run()
    xi = x.clone().requires_grad_()
    states = tuple(s.clone().requires_grad_() for s in as_tuple(hx))
    outs = handwritten_stack(module, xi, states if len(states) == 2 else states[0],
                             variant_step(step_equations, family, options))
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    expected_grads = torch.autograd.grad(loss, [xi, *states, *module.parameters()])
    for a, b in zip(grads, expected_grads):
        close(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_packed_equals_each_sequence_alone(variant, close):
    """A packed, unsorted batch gives each sequence what it gets on its own (outputs and final states)."""
    build, _, _ = VARIANTS[variant]
    module = build(num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    hx = initial_states(module, B, torch.float64)
    out, final = module(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False), hx)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    for b, n in enumerate(LENGTHS):
        alone = tuple(s[:, b:b + 1] for s in as_tuple(hx))
        out_b, final_b = module(x[b:b + 1, :n], alone if len(alone) == 2 else alone[0])
        close(padded[b:b + 1, :n], out_b)
        for a, e in zip(as_tuple(final), as_tuple(final_b)):
            close(a[:, b:b + 1], e)


# ----------------------------------------------------------------------------
# GPU (skipped without CUDA)
# ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm_proj", "gru", "rnn_relu"])
def test_parity_on_cuda_float32(kind, close):
    ref, fused = make_pair(kind, torch.float32, num_layers=2, bidirectional=True, batch_first=True)
    ref.cuda()
    fused.cuda()
    x = torch.randn(B, T, I, device="cuda")
    with torch.backends.cudnn.flags(enabled=False):  # torch's native kernels: no TF32 or cuDNN algorithm choice
        expected = ref(x)
    actual = fused(x)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-4, atol=1e-4)
