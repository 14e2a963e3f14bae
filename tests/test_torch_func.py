"""torch.func and forward-mode AD on models holding fusedrnn layers, against torch.nn on the same weights.

The fused ops are custom ops that functorch cannot differentiate (no forward-mode formula; the
autograd.Function torch builds for them lacks ``setup_context``), so under a differentiating
transform or with forward-AD tangents ``fusedrnn.functional.layer`` runs the reference's forward
as plain torch ops (docs/design.md section 6).  Before that, ``torch.func.jvp`` returned all-zero
tangents without a word: every tangent here is compared with torch.nn's, which are checked to be
non-zero, so zeros fail.  float64 throughout: torch.nn's float32 LSTM on the CPU runs oneDNN
kernels that have no forward-mode formula either.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import backends, functional

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    # the once-only warning that a call left its backend for the reference is asserted in
    # test_a_forced_backend_...; elsewhere it depends on which test ran first
    pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning"),
    # torch's own note that vmap runs the custom op once per sample (no batching rule)
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
]

DTYPE = torch.float64
I, H, T, B = 3, 5, 4, 2

#: (torch.nn class, fusedrnn class, constructor keywords)
LAYERS = {
    "lstm": (nn.LSTM, fusedrnn.LSTM, {}),
    "lstm_proj_bidir_2layers": (nn.LSTM, fusedrnn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    "gru": (nn.GRU, fusedrnn.GRU, {}),
    "rnn_relu": (nn.RNN, fusedrnn.RNN, dict(nonlinearity="relu")),
}
CELLS = {
    "lstm_cell": (nn.LSTMCell, fusedrnn.LSTMCell),
    "gru_cell": (nn.GRUCell, fusedrnn.GRUCell),
    "rnn_cell": (nn.RNNCell, fusedrnn.RNNCell),
}


def pair(kind: str, **extra):
    """(torch.nn module, fusedrnn module) with the same float64 weights."""
    if kind in LAYERS:
        ref_cls, fused_cls, kwargs = LAYERS[kind]
        ref = ref_cls(I, H, dtype=DTYPE, **kwargs)
        fused = fused_cls(I, H, dtype=DTYPE, **kwargs, **extra)
    else:
        ref_cls, fused_cls = CELLS[kind]
        ref = ref_cls(I, H, dtype=DTYPE)
        fused = fused_cls(I, H, dtype=DTYPE, **extra)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def initial_states(module):
    """Random initial states for ``module`` (a tuple: the modules' second argument, flattened)."""
    if isinstance(module, nn.RNNCellBase):
        count = 2 if isinstance(module, nn.LSTMCell) else 1
        return tuple(torch.randn(B, module.hidden_size, dtype=DTYPE) for _ in range(count))
    layers = module.num_layers * (2 if module.bidirectional else 1)
    hout = module.proj_size or module.hidden_size
    h0 = torch.randn(layers, B, hout, dtype=DTYPE)
    return (h0, torch.randn(layers, B, module.hidden_size, dtype=DTYPE)) if isinstance(module, nn.LSTM) else (h0,)


def inputs_for(module):
    x = torch.randn((B, I) if isinstance(module, nn.RNNCellBase) else (T, B, I), dtype=DTYPE)
    return (x, *initial_states(module))


def flat(module, result):
    """A module's result as a flat tuple (out, h_n[, c_n]; a cell's new states)."""
    if isinstance(module, nn.RNNCellBase):
        return result if isinstance(result, tuple) else (result,)
    out, hidden = result
    return (out, *hidden) if isinstance(hidden, tuple) else (out, hidden)


def arguments(x, states):
    """The modules' arguments: the input and the state, a pair for the LSTMs."""
    return (x, None if not states else (tuple(states) if len(states) == 2 else states[0]))


def run(module, x, *states):
    """Every output of ``module`` as a flat tuple."""
    return flat(module, module(*arguments(x, states)))


def run_with(module, parameters, x, *states):
    """``run`` with ``parameters`` in place of the module's own."""
    return flat(module, functional_call(module, parameters, arguments(x, states)))


def params(module):
    return {name: p.detach() for name, p in module.named_parameters()}


def like(tensors):
    """Random tangents shaped as ``tensors`` (a tuple or a dict)."""
    if isinstance(tensors, dict):
        return {k: torch.randn_like(v) for k, v in tensors.items()}
    return tuple(torch.randn_like(t) for t in tensors)


def assert_matches(actual, expected, what):
    """Each tensor equals torch.nn's within float64's tolerance; none of torch.nn's is all zeros, so
    a result of zeros (the bug this file guards against) fails."""
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert e.abs().max() > 0, f"{what}[{i}]: torch.nn's values are all zero, so zeros would pass"
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}[{i}]: {m}")


ALL = [*LAYERS, *CELLS]


@pytest.mark.parametrize("kind", ALL)
def test_jvp_wrt_input_and_states(kind):
    ref, fused = pair(kind)
    primals = inputs_for(ref)
    tangents = like(primals)
    out_e, tan_e = jvp(lambda *a: run(ref, *a), primals, tangents)
    out_a, tan_a = jvp(lambda *a: run(fused, *a), primals, tangents)
    assert_matches(out_a, out_e, "outputs")
    assert_matches(tan_a, tan_e, "tangents")


@pytest.mark.parametrize("kind", ALL)
def test_jvp_wrt_parameters(kind):
    ref, fused = pair(kind)
    x, *states = inputs_for(ref)
    p = params(ref)
    tangents = like(p)
    _, tan_e = jvp(lambda q: run_with(ref, q, x, *states), (p,), (tangents,))
    _, tan_a = jvp(lambda q: run_with(fused, q, x, *states), (p,), (tangents,))
    assert_matches(tan_a, tan_e, "tangents w.r.t. the parameters")


@pytest.mark.parametrize("kind", ALL)
def test_forward_ad_dual_tensors(kind):
    """torch.autograd.forward_ad: tangents on the input, the states and every parameter at once."""
    ref, fused = pair(kind)
    primals = inputs_for(ref)
    tangents = like(primals)
    p = params(ref)
    p_tangents = like(p)

    def tangents_of(module):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, d) for t, d in zip(primals, tangents)]
            dual_params = {k: fwAD.make_dual(v, p_tangents[k]) for k, v in p.items()}
            return [fwAD.unpack_dual(o).tangent for o in run_with(module, dual_params, *duals)]

    assert_matches(tangents_of(fused), tangents_of(ref), "forward-AD tangents")


@pytest.mark.parametrize("kind", ["lstm_proj_bidir_2layers", "gru", "lstm_cell"])
@pytest.mark.parametrize("transform", [jacrev, jacfwd])
def test_jacobians_wrt_input(kind, transform):
    ref, fused = pair(kind)
    primals = inputs_for(ref)
    argnums = tuple(range(len(primals)))
    expected = transform(lambda *a: run(ref, *a), argnums=argnums)(*primals)
    actual = transform(lambda *a: run(fused, *a), argnums=argnums)(*primals)
    assert_matches([j for row in actual for j in row], [j for row in expected for j in row], transform.__name__)


@pytest.mark.parametrize("kind", ALL)
def test_grad_and_vjp_wrt_parameters(kind):
    ref, fused = pair(kind)
    x, *states = inputs_for(ref)
    p = params(ref)
    weights = [torch.randn_like(o) for o in run(ref, x, *states)]

    def loss(module):
        return lambda q: sum((o * w).sum() for o, w in zip(run_with(module, q, x, *states), weights))

    expected = torch.autograd.grad(loss(ref)(dict(ref.named_parameters())), list(ref.parameters()))
    actual = grad(loss(fused))(p)
    assert_matches([actual[k] for k in p], expected, "torch.func.grad")
    _, pullback = vjp(lambda q: run_with(fused, q, x, *states), p)
    (vjp_grads,) = pullback(tuple(weights))
    assert_matches([vjp_grads[k] for k in p], expected, "torch.func.vjp")


@pytest.mark.parametrize("kind", ALL)
def test_per_sample_gradients_with_vmap_of_grad(kind):
    """The recipe of the torch.func tutorial: vmap(grad(loss)) over unbatched samples (input and
    initial states: with zero states a cell's gradient w.r.t. weight_hh would be zero)."""
    ref, fused = pair(kind)
    primals = inputs_for(ref)
    batch_dim = 0 if isinstance(ref, nn.RNNCellBase) else 1  # the samples: B of them

    def sample(i):
        return [t.select(batch_dim, i) for t in primals]

    weights = [torch.randn_like(o) for o in run(ref, *sample(0))]
    p = params(ref)

    def loss(module):
        return lambda q, *a: sum((o * w).sum() for o, w in zip(run_with(module, q, *a), weights))

    actual = vmap(grad(loss(fused)), in_dims=(None, *(batch_dim,) * len(primals)))(p, *primals)
    for i in range(B):
        expected = torch.autograd.grad(loss(ref)(dict(ref.named_parameters()), *sample(i)), list(ref.parameters()))
        assert_matches([actual[k][i] for k in p], expected, f"sample {i}")


@pytest.mark.parametrize("mode", ["jvp", "grad"])
def test_packed_sequence_input(mode):
    """Differentiated w.r.t. the packed rows (torch's pack_padded_sequence itself has no forward-mode
    formula, so the packing happens outside the transform).  torch.nn's LSTM over packed input runs
    under no torch.func transform, so its derivatives come from plain reverse-mode autograd."""
    ref, fused = pair("lstm_proj_bidir_2layers")
    lengths = torch.tensor([2, T, 3])  # unsorted: the modules sort and unsort
    packed = pack_padded_sequence(torch.randn(T, 3, I, dtype=DTYPE), lengths, enforce_sorted=False)

    def run_packed(module):
        def f(data):
            out, (h_n, c_n) = module(packed._replace(data=data))
            return out.data, h_n, c_n
        return f

    data = packed.data
    if mode == "jvp":
        v = torch.randn_like(data)
        jacobians = torch.autograd.functional.jacobian(run_packed(ref), data)
        expected = [torch.tensordot(j, v, dims=v.dim()) for j in jacobians]
        assert_matches(jvp(run_packed(fused), (data,), (v,))[1], expected, "tangents")
    else:
        def loss(module):
            return lambda data: sum((o * o).sum() for o in run_packed(module)(data))
        leaf = data.clone().requires_grad_()
        assert_matches([grad(loss(fused))(data)], torch.autograd.grad(loss(ref)(leaf), leaf), "gradient")


@pytest.fixture
def no_reference_forward(monkeypatch):
    """Fail any call of ``functional.layer`` that leaves the fused op for the reference's forward."""
    def refuse(*args, **kwargs):
        raise AssertionError("the call ran the reference's forward instead of the fused op")
    monkeypatch.setattr(functional, "sequence_forward", refuse)


@pytest.mark.parametrize("kind", ["lstm_proj_bidir_2layers", "gru_cell"])
def test_outside_transforms_and_under_vmap_alone_the_fused_op_runs(kind, no_reference_forward):
    """The fast path is untouched: plain calls, backward, and vmap (which batches the op itself)."""
    ref, fused = pair(kind)
    primals = inputs_for(ref)
    assert_matches(run(fused, *primals), run(ref, *primals), "plain call")
    with fwAD.dual_level():  # a dual level without tangents on fusedrnn's tensors changes nothing
        assert_matches(run(fused, *primals), run(ref, *primals), "inside a dual level")
    n = 2
    batched = [torch.stack([torch.randn_like(t) for _ in range(n)]) for t in primals]
    actual = vmap(lambda *a: run(fused, *a))(*batched)
    for i in range(n):
        assert_matches([a[i] for a in actual], run(ref, *(t[i] for t in batched)), f"vmap, sample {i}")


@pytest.mark.parametrize("how", ["module argument", "use_backend", "functional argument"])
def test_a_forced_backend_runs_the_reference_with_a_warning_once(how, monkeypatch):
    """backend='cpu' named by the user: under jvp the call still runs as plain torch ops (correct
    tangents), and says once that it left 'cpu'."""
    monkeypatch.setattr(backends, "_warned", set())
    ref, fused = pair("lstm", backend="cpu" if how == "module argument" else "auto")
    x, h0, c0 = inputs_for(ref)
    tangents = like((x, h0, c0))
    if how == "functional argument":
        w = [p.detach() for p in ref.parameters()]

        def f(x, h0, c0):
            out, h_n, c_n = functional.lstm_layer(x, h0[0], c0[0], *w, backend="cpu")
            return out, h_n.unsqueeze(0), c_n.unsqueeze(0)
    else:
        def f(x, h0, c0):
            return run(fused, x, h0, c0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fusedrnn.use_backend("cpu") if how == "use_backend" else contextlib.nullcontext():
            for _ in range(2):
                _, tan_a = jvp(f, (x, h0, c0), tangents)
    _, tan_e = jvp(lambda *a: run(ref, *a), (x, h0, c0), tangents)
    assert_matches(tan_a, tan_e, "tangents")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "instead of 'cpu'" in messages[0] and "torch.func.jvp" in messages[0], messages[0]


def test_the_reference_backend_named_explicitly_warns_nothing(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    ref, fused = pair("gru", backend="reference")
    primals = inputs_for(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, tan_a = jvp(lambda *a: run(fused, *a), primals, like(primals))
    assert all(t.abs().max() > 0 for t in tan_a)


def test_an_unknown_backend_still_raises_under_a_transform():
    _, fused = pair("lstm", backend="cpu")
    fused.backend = "no-such-backend"  # past the constructor's check: the call's own check must catch it
    x = torch.randn(T, B, I, dtype=DTYPE)
    with pytest.raises(ValueError, match="no-such-backend"):
        jvp(lambda x: run(fused, x), (x,), (torch.randn_like(x),))


def test_jvp_and_grad_under_torch_compile():
    """Dynamo traces the transform and the module: the check that picks the reference must see the
    transform there too (Dynamo's model of the interpreter stack alone would not tell)."""
    ref, fused = pair("lstm_proj_bidir_2layers")
    x, h0, c0 = inputs_for(ref)
    v = torch.randn_like(x)

    def jvp_of(module):
        return lambda x, v: jvp(lambda x: run(module, x, h0, c0), (x,), (v,))[1]

    def grad_of(module):
        return lambda x: grad(lambda x: sum(o.sum() for o in run(module, x, h0, c0)))(x)

    torch._dynamo.reset()
    assert_matches(torch.compile(jvp_of(fused), backend="eager", fullgraph=True)(x, v), jvp_of(ref)(x, v), "jvp")
    assert_matches([torch.compile(grad_of(fused), backend="eager", fullgraph=True)(x)], [grad_of(ref)(x)], "grad")


def test_a_compiled_model_called_on_dual_tensors_raises():
    """The compiled graph holds the op (Dynamo does not see the tangent while tracing), and the op
    has no forward-mode formula: torch raises, which is what is pinned here; never zero tangents."""
    _, fused = pair("lstm")
    x = torch.randn(T, B, I, dtype=DTYPE)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: run(fused, x), backend="eager", fullgraph=True)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        compiled(fwAD.make_dual(x, torch.randn_like(x)))
