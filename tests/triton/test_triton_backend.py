"""The ``triton`` backend against the reference: every kernel, forward and backward.

Runs on CPU tensors through Triton's interpreter in its own process::

    TRITON_INTERPRET=1 python -m pytest tests -m triton

and on a CUDA GPU without the interpreter (the ``gpu``-marked tests add the
GPU-only kernels and large shapes).  Every buffer the sequence drivers allocate is
filled with NaN first (``sequence.POISON``), so an element no kernel writes
fails the comparison.

What covers which kernel:

* ``forward_step_kernel`` / ``forward_persistent_kernel`` /
  ``forward_grid_sync_kernel``: the forward tests, once per strategy
  (``per_step``, ``persistent``, ``grid_sync``), outputs and the whole
  workspace against :func:`fusedrnn.reference.sequence_forward` in float32
  (under the interpreter ``grid_sync``'s programs run concurrently, through
  ``fusedrnn/triton_kernels/concurrent_grid.py``; its gradients, 16-bit
  dtypes and planted barrier bugs: tests/triton/test_triton_grid_sync.py);
* ``backward_step_kernel``: the gradient tests, through the ops and autograd,
  compared by :mod:`fusedrnn.testing` with the float64 reference and torch.nn
  (float32: 1e-5 relative; float16/bfloat16: the 2x rule against the
  reference backend in the same dtype);

Sizes are odd (H=37, B=5, I=3, T=1 and 7) so no dimension is a multiple of
the 16-wide tiles the interpreter runs with; packed batches have unsorted
lengths.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.triton

from triton_support import DEVICE, INTERPRETING, assert_passed, skip_module_unless_kernels_run

skip_module_unless_kernels_run()

import fusedrnn.testing as ft  # noqa: E402
from fusedrnn import backends, reference  # noqa: E402
from fusedrnn.backends.base import LayerWeights  # noqa: E402
from fusedrnn.triton_kernels import sequence  # noqa: E402

from layer_cases import make_case  # noqa: E402

SHAPE = ft.Shape(T=7, B=5, I=3, H=37)
SINGLE_STEP = ft.Shape(T=1, B=5, I=3, H=37)
STRATEGIES = ("per_step", "persistent", "grid_sync")
#: the strategies that take no projection, and the message of their refusal
NO_PROJECTION = {"persistent": "persistent kernel needs", "grid_sync": "grid-synchronised kernel needs no projection"}
VARIANTS = list(ft.VARIANTS)


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer a sequence driver allocates starts as NaN."""
    monkeypatch.setattr(sequence, "POISON", True)


@pytest.fixture
def triton_backend(monkeypatch):
    """The registered backend instance, its forward strategy restored after the test."""
    backend = backends.get("triton")
    monkeypatch.setattr(backend, "forward_strategy", backend.forward_strategy)
    return backend


def _move(t):
    return None if t is None else t.to(DEVICE)


def _layer_case(variant: str, shape: ft.Shape, packed: bool, reverse: bool, dtype=torch.float32):
    v = ft.VARIANTS[variant]
    case = make_case(v.cell, T=shape.T, B=shape.B, I=shape.I, H=shape.H, proj=ft.projection_size(shape.H)
                     if v.projection else 0, peephole=v.peephole, packed=packed, reverse=reverse, dtype=dtype,
                     generator=torch.Generator().manual_seed(len(variant) * 31 + shape.T))
    return case


# ----------------------------------------------------------------------------
# Forward kernels: outputs and workspace, per strategy
# ----------------------------------------------------------------------------

FORWARD_LAYOUTS = {  # id -> (shape, packed, reverse)
    "T7-padded": (SHAPE, False, False),
    "T7-padded-reverse": (SHAPE, False, True),
    "T7-packed": (SHAPE, True, False),
    "T7-packed-reverse": (SHAPE, True, True),
    "T1-padded": (SINGLE_STEP, False, False),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", list(FORWARD_LAYOUTS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference(variant, layout, strategy, triton_backend):
    shape, packed, reverse = FORWARD_LAYOUTS[layout]
    if strategy in NO_PROJECTION and ft.VARIANTS[variant].projection:
        with pytest.raises(ValueError, match=NO_PROJECTION[strategy]):
            sequence.choose_forward_strategy(ft.VARIANTS[variant].cell, torch.empty(0),
                                           _layer_case(variant, shape, packed, reverse).weights, strategy)
        return
    case = _layer_case(variant, shape, packed, reverse)
    inputs = [_move(t) for t in case.inputs()]
    triton_backend.forward_strategy = strategy
    expected = reference.sequence_forward(case.cell, *inputs[:3], LayerWeights(*inputs[3:]),
                                          case.batch_sizes, reverse)
    actual = triton_backend.forward(case.cell, *inputs[:3], LayerWeights(*inputs[3:]), case.batch_sizes, reverse)
    for name, a, e in zip(expected._fields, actual, expected):
        if e is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru-reset-before", "rnn-tanh"])
def test_forward_saturated_gates_stay_finite(cell, triton_backend):
    """Pre-activations around +-100: sigmoid and tanh must saturate, not overflow into NaN."""
    case = _layer_case(cell, SHAPE, packed=False, reverse=False)
    inputs = [_move(t) for t in case.inputs()]
    inputs[0] = inputs[0] * 100 * case.x.shape[-1] ** 0.5  # x W_ih^T of order 100
    for strategy in STRATEGIES:
        triton_backend.forward_strategy = strategy
        actual = triton_backend.forward(case.cell, *inputs[:3], LayerWeights(*inputs[3:]), None, False)
        expected = reference.sequence_forward(case.cell, *inputs[:3], LayerWeights(*inputs[3:]), None, False)
        assert bool(torch.isfinite(actual.out).all()), strategy
        torch.testing.assert_close(actual.out, expected.out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(actual.workspace, expected.workspace, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["lstm-peephole", "gru-reset-before", "rnn-relu"])
def test_empty_sequence_passes_states_through(variant, triton_backend):
    """T=0: no kernel runs; the final state is the initial one, and so are their gradients."""
    case = _layer_case(variant, SINGLE_STEP, False, False)
    x, h0, c0, *w = [_move(t) for t in case.inputs()]
    x = x[:0]
    weights = LayerWeights(*w)
    expected = reference.sequence_forward(case.cell, x, h0, c0, weights, None, False)
    actual = triton_backend.forward(case.cell, x, h0, c0, weights, None, False)
    for name, a, e in zip(expected._fields, actual, expected):
        if e is not None:
            torch.testing.assert_close(a, e, msg=lambda m: f"{name}: {m}")
    grads = (torch.zeros_like(actual.out), torch.rand_like(h0), None if c0 is None else torch.rand_like(c0))
    got = triton_backend.backward(case.cell, *grads, x, h0, c0, weights, None, False, actual.out, actual.workspace)
    want = reference.sequence_backward(case.cell, *grads, x, h0, c0, weights, None, False, expected.out,
                                       expected.workspace)
    torch.testing.assert_close(got.dh0, want.dh0)
    torch.testing.assert_close(got.dweights.w_hh, want.dweights.w_hh)


# ----------------------------------------------------------------------------
# Backward kernel (and the forward once more): all outputs and gradients
# through the ops, against the float64 reference and torch.nn
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checker():
    return ft.Checker(DEVICE)


GRADIENT_CASES = [(v, SHAPE, o) for v in VARIANTS for o in ("padded", "packed-reverse")] + \
                 [(v, SINGLE_STEP, "reverse") for v in VARIANTS] + \
                 [(v, SHAPE, o) for v in ("lstm-peephole-proj", "gru-reset-before") for o in ("packed", "no-bias")]


@pytest.mark.parametrize("variant,shape,option", GRADIENT_CASES,
                         ids=[f"{v}-{o}-T{s.T}" for v, s, o in GRADIENT_CASES])
def test_gradients_float32(variant, shape, option, checker):
    assert_passed(checker.check("triton", ft.Case(variant, shape, option), torch.float32))


LOW_PRECISION_CASES = [(v, torch.bfloat16, "packed-reverse") for v in VARIANTS] + \
                      [(v, torch.float16, "padded") for v in VARIANTS]


@pytest.mark.parametrize("variant,dtype,option", LOW_PRECISION_CASES,
                         ids=[f"{v}-{ft.dtype_name(d)}-{o}" for v, d, o in LOW_PRECISION_CASES])
def test_gradients_low_precision(variant, dtype, option, checker):
    """float16/bfloat16 by the 2x rule (bfloat16 dots run in float32 under the interpreter)."""
    assert_passed(checker.check("triton", ft.Case(variant, SHAPE, option), dtype))


# ----------------------------------------------------------------------------
# The backend's contract: availability, what it refuses, strategy choice
# ----------------------------------------------------------------------------


def test_backend_is_available_here():
    assert backends.unavailable_reason("triton") is None


def test_unsupported_dtype_is_named(triton_backend):
    case = _layer_case("lstm", SINGLE_STEP, False, False, dtype=torch.float64)
    why = triton_backend.unsupported(case.cell, _move(case.x), case.weights)
    assert why is not None and "float64" in why


def test_explicit_request_for_unsupported_call_raises(triton_backend):
    from fusedrnn import functional

    case = _layer_case("gru", SINGLE_STEP, False, False, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="triton"):
        functional.layer(case.cell, _move(case.x), _move(case.h0), None,
                         LayerWeights(*(_move(w) for w in case.weights)), backend="triton")


def test_unknown_strategy_is_rejected():
    case = _layer_case("rnn-tanh", SINGLE_STEP, False, False)
    with pytest.raises(ValueError, match="unknown forward strategy"):
        sequence.choose_forward_strategy(case.cell, case.x, case.weights, "sideways")


@pytest.mark.skipif(not INTERPRETING, reason="the interpreter's choice; a GPU may pick grid_sync")
def test_auto_strategy_picks_persistent_for_small_hidden():
    small = _layer_case("lstm", SINGLE_STEP, False, False)
    assert sequence.choose_forward_strategy(small.cell, small.x, small.weights) == "persistent"
    projected = _layer_case("lstm-proj", SINGLE_STEP, False, False)
    assert sequence.choose_forward_strategy(projected.cell, projected.x, projected.weights) == "per_step"


def test_importing_fusedrnn_does_not_import_the_kernels():
    code = ("import sys, fusedrnn, fusedrnn.backends as b; b.report(); "
            "assert 'fusedrnn.triton_kernels' not in sys.modules, 'kernels imported eagerly'")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(INTERPRETING, reason="checks the message given without the interpreter")
def test_cpu_tensors_refused_without_interpreter(triton_backend):  # pragma: no cover - GPU machines
    case = _layer_case("rnn-tanh", SINGLE_STEP, False, False)
    assert "TRITON_INTERPRET" in triton_backend.unsupported(case.cell, case.x, case.weights)


# ----------------------------------------------------------------------------
# GPU only: large shapes, bfloat16 on tensor cores
# ----------------------------------------------------------------------------


LARGE = ft.Shape(T=512, B=16, I=64, H=1024)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(INTERPRETING, reason="large shapes are for the GPU")
@pytest.mark.parametrize("strategy", ["per_step", "grid_sync"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=ft.dtype_name)
@pytest.mark.parametrize("variant", ["lstm", "gru"])
def test_large_shape_low_precision(variant, dtype, strategy, checker, triton_backend):  # pragma: no cover - GPU
    triton_backend.forward_strategy = strategy
    assert_passed(checker.check("triton", ft.Case(variant, LARGE, "padded"), dtype, oracles=("reference",)))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING, reason="CUDA graphs need CUDA tensors")
@pytest.mark.parametrize("variant", ["lstm-peephole-proj", "gru-reset-before"])
def test_cuda_graph_replay_matches_direct_run(variant, triton_backend, monkeypatch):  # pragma: no cover - GPU
    """Forward and backward replayed from graphs equal direct runs, for new inputs of the captured shape too."""
    triton_backend.forward_strategy = "per_step"
    case = _layer_case(variant, SHAPE, packed=True, reverse=True)
    first = [_move(t) for t in case.inputs()]
    second = [None if t is None else t * 0.5 for t in first]

    def run(inputs):
        weights = LayerWeights(*inputs[3:])
        fwd = triton_backend.forward(case.cell, *inputs[:3], weights, case.batch_sizes, True)
        grads = (torch.ones_like(fwd.out), torch.ones_like(fwd.h_n), None if fwd.c_n is None else fwd.c_n * 0 + 1)
        bwd = triton_backend.backward(case.cell, *grads, *inputs[:3], weights, case.batch_sizes, True, fwd.out,
                                      fwd.workspace)
        return [*fwd, bwd.dx, bwd.dh0, bwd.dc0, *bwd.dweights]

    monkeypatch.setattr(triton_backend, "cuda_graphs", False)
    direct = [run(first), run(second)]
    monkeypatch.setattr(triton_backend, "cuda_graphs", True)
    for i, inputs in enumerate([first, second, first]):  # capture, replay with new values, replay again
        for a, e in zip(run(inputs), direct[i % 2]):
            if e is not None:
                torch.testing.assert_close(a, e, rtol=0, atol=0)
