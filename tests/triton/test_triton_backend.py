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
* ``diagonal_forward_kernel`` / ``diagonal_backward_kernel`` (IndRNN, one launch per sequence,
  fusedrnn/triton_kernels/diagonal.py): the same tests with the IndRNN variants, whatever the
  strategy (it has none); ``layer_norm.forward_step_kernel`` / ``backward_step_kernel`` (the
  layer-normalised LSTM and GRU, a program per whole rows: fusedrnn/triton_kernels/layer_norm.py) and
  ``slstm.forward_step_kernel`` / ``backward_step_kernel`` (sLSTM's gating) likewise;
* ``backward_step_kernel``: the gradient tests, through the ops and autograd,
  compared by :mod:`fusedrnn.testing` with the float64 reference and torch.nn
  (float32: 1e-5 relative; float16/bfloat16: the 2x rule against the
  reference backend in the same dtype);

every case's data is :mod:`fusedrnn.testing`'s (:func:`fusedrnn.testing.layer_case`
for the direct calls to the backend).

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

from conftest import assert_close
from triton_support import DEVICE, INTERPRETING, skip_module_unless_kernels_run

skip_module_unless_kernels_run()

import fusedrnn.testing as ft  # noqa: E402
from fusedrnn import backends, reference  # noqa: E402
from fusedrnn.triton_kernels import sequence  # noqa: E402

SHAPE = ft.Shape(T=7, B=5, I=3, H=37)
SINGLE_STEP = ft.Shape(T=1, B=5, I=3, H=37)
STRATEGIES = ("per_step", "persistent", "grid_sync")
#: the strategies that take no projection, and the message of their refusal
NO_PROJECTION = {"persistent": "persistent kernel needs", "grid_sync": "grid-synchronised kernel needs no projection"}
VARIANTS = list(ft.kernel_variants("triton"))  # the cells the triton backend has kernels for (IndRNN's included)


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


def _layer_case(variant: str, shape: ft.Shape, option: str = "padded", dtype=torch.float32) -> ft.LayerCase:
    return ft.layer_case(ft.Case(variant, shape, option), dtype, DEVICE)


def assert_forward_matches(actual, expected, label: str):
    """A forward result (out, h_n, c_n, workspace) against the reference's on the same float32 inputs: the
    same fields present, each within the same-dtype tolerance (tests/conftest.py, docs/design.md section 8)."""
    for name, a, e in zip(expected._fields, actual, expected):
        if e is None:
            assert a is None, f"{label} {name}"
            continue
        assert_close(a, e, msg=f"{label} {name}")


# ----------------------------------------------------------------------------
# Forward kernels: outputs and workspace, per strategy
# ----------------------------------------------------------------------------

FORWARD_LAYOUTS = {  # id -> (shape, option)
    "T7-padded": (SHAPE, "padded"),
    "T7-padded-reverse": (SHAPE, "reverse"),
    "T7-packed": (SHAPE, "packed"),
    "T7-packed-reverse": (SHAPE, "packed-reverse"),
    "T1-padded": (SINGLE_STEP, "padded"),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", list(FORWARD_LAYOUTS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_reference(variant, layout, strategy, triton_backend):
    case = _layer_case(variant, *FORWARD_LAYOUTS[layout])
    if strategy in NO_PROJECTION and ft.VARIANTS[variant].projection:
        with pytest.raises(ValueError, match=NO_PROJECTION[strategy]):
            sequence.choose_forward_strategy(case.cell, torch.empty(0), case.weights, strategy)
        return
    triton_backend.forward_strategy = strategy
    assert_forward_matches(triton_backend.forward(*case.args()), reference.sequence_forward(*case.args()), strategy)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru-reset-before", "rnn-tanh", "indrnn-tanh", "layer-norm-lstm",
                                  "layer-norm-gru", "slstm"])
def test_forward_saturated_gates_stay_finite(cell, triton_backend):
    """Pre-activations around +-100: sigmoid and tanh must saturate, not overflow into NaN."""
    case = _layer_case(cell, SHAPE)
    case.x = case.x * 100 * case.x.shape[-1] ** 0.5  # x W_ih^T of order 100
    for strategy in STRATEGIES:
        triton_backend.forward_strategy = strategy
        actual = triton_backend.forward(*case.args())
        assert bool(torch.isfinite(actual.out).all()), strategy
        assert_forward_matches(actual, reference.sequence_forward(*case.args()), strategy)


@pytest.mark.parametrize("variant", ["lstm-peephole", "gru-reset-before", "rnn-relu", "indrnn-relu",
                                     "layer-norm-lstm", "layer-norm-gru", "slstm"])
def test_empty_sequence_passes_states_through(variant, triton_backend):
    """T=0: no kernel runs; the final state is the initial one, and so are their gradients."""
    case = _layer_case(variant, SINGLE_STEP)
    x, h0, c0, weights = case.x[:0], case.h0, case.c0, case.weights
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
    checker.check("triton", ft.Case(variant, shape, option), torch.float32).assert_passed()


LOW_PRECISION_CASES = [(v, torch.bfloat16, "packed-reverse") for v in VARIANTS] + \
                      [(v, torch.float16, "padded") for v in VARIANTS]


@pytest.mark.parametrize("variant,dtype,option", LOW_PRECISION_CASES,
                         ids=[f"{v}-{ft.dtype_name(d)}-{o}" for v, d, o in LOW_PRECISION_CASES])
def test_gradients_low_precision(variant, dtype, option, checker):
    """float16/bfloat16 by the 2x rule (bfloat16 dots run in float32 under the interpreter)."""
    checker.check("triton", ft.Case(variant, SHAPE, option), dtype).assert_passed()


# ----------------------------------------------------------------------------
# The backend's contract: availability, what it refuses, strategy choice
# ----------------------------------------------------------------------------


def test_backend_is_available_here():
    assert backends.unavailable_reason("triton") is None


def test_unsupported_dtype_is_named(triton_backend):
    case = _layer_case("lstm", SINGLE_STEP, dtype=torch.float64)
    why = triton_backend.unsupported(case.cell, case.x, case.weights)
    assert why is not None and "float64" in why


def test_explicit_request_for_unsupported_call_raises(triton_backend):
    from fusedrnn import functional

    case = _layer_case("gru", SINGLE_STEP, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="triton"):
        functional.layer(case.cell, case.x, case.h0, None, case.weights, backend="triton")


def test_unknown_strategy_is_rejected():
    case = _layer_case("rnn-tanh", SINGLE_STEP)
    with pytest.raises(ValueError, match="unknown forward strategy"):
        sequence.choose_forward_strategy(case.cell, case.x, case.weights, "sideways")


@pytest.mark.skipif(not INTERPRETING, reason="the interpreter's choice; a GPU may pick grid_sync")
def test_auto_strategy_picks_persistent_for_small_hidden():
    small = _layer_case("lstm", SINGLE_STEP)
    assert sequence.choose_forward_strategy(small.cell, small.x, small.weights) == "persistent"
    projected = _layer_case("lstm-proj", SINGLE_STEP)
    assert sequence.choose_forward_strategy(projected.cell, projected.x, projected.weights) == "per_step"


def test_importing_fusedrnn_does_not_import_the_kernels():
    code = ("import sys, fusedrnn, fusedrnn.backends as b; b.report(); "
            "assert 'fusedrnn.triton_kernels' not in sys.modules, 'kernels imported eagerly'")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(INTERPRETING, reason="checks the message given without the interpreter")
def test_cpu_tensors_refused_without_interpreter(triton_backend):  # pragma: no cover - GPU machines
    case = _layer_case("rnn-tanh", SINGLE_STEP)
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
    checker.check("triton", ft.Case(variant, LARGE, "padded"), dtype, oracles=("reference",)).assert_passed()


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING, reason="CUDA graphs need CUDA tensors")
@pytest.mark.parametrize("variant", ["lstm-peephole-proj", "gru-reset-before"])
def test_cuda_graph_replay_matches_direct_run(variant, triton_backend, monkeypatch):  # pragma: no cover - GPU
    """Forward and backward replayed from graphs equal direct runs, for new inputs of the captured shape too."""
    triton_backend.forward_strategy = "per_step"
    first = _layer_case(variant, SHAPE, "packed-reverse")
    second = first.map(lambda t: t * 0.5)  # new values in the captured shapes

    def run(case):
        fwd = triton_backend.forward(*case.args())
        bwd = triton_backend.backward(case.cell, *case.upstream, *case.inputs()[:3], case.weights, case.batch_sizes,
                                      case.reverse, fwd.out, fwd.workspace)
        return [*fwd, bwd.dx, bwd.dh0, bwd.dc0, *bwd.dweights]

    monkeypatch.setattr(triton_backend, "cuda_graphs", False)
    direct = [run(first), run(second)]
    monkeypatch.setattr(triton_backend, "cuda_graphs", True)
    for i, inputs in enumerate([first, second, first]):  # capture, replay with new values, replay again
        for a, e in zip(run(inputs), direct[i % 2]):
            if e is not None:
                torch.testing.assert_close(a, e, rtol=0, atol=0)
