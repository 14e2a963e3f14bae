"""Problems with NaN, +-inf or huge weights, their oracle, and a position-by-position comparison.

Shared by tests/test_nonfinite.py, tests/test_saturation.py and
tests/triton/test_triton_nonfinite.py.  A problem is a :mod:`fusedrnn.testing`
case (padded, forward direction) whose inputs are then edited: one special
value written at a few spots of one input, or the gate weights scaled.  The
oracle is torch.nn in float64 where it has the cell, else autograd through the
float64 reference (peepholes, GRU reset_before): the same rounded inputs,
outputs and the gradient of every input.

The comparison is stricter than :func:`fusedrnn.testing.error`, which counts
any NaN as a failure: NaN exactly where the oracle has NaN, +inf and -inf
exactly where it has them, and the finite values within the dtype's tolerance
of fusedrnn.testing (max abs error over the largest finite magnitude of the
oracle's tensor; the error itself where the oracle's tensor is all zeros).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Dict, List, Optional, Tuple

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn import backends

#: H = 37: two whole AVX-512 vectors of units and a tail, so spots land in both
SHAPE = ft.Shape(T=3, B=3, I=4, H=37)
#: one step: an infinite gradient there is not yet mixed with NaN from earlier steps (seen: the LSTM
#: without peepholes turned da_o = inf into NaN through the absent peephole's 0, with W_hr = inf)
SINGLE_STEP = ft.Shape(T=1, B=3, I=4, H=37)
#: the cells; torch.nn has no peepholes, no reset_before GRU, no IndRNN and no layer-normalised cells (the
#: reference is the oracle there).  A backend runs those of them it has kernels for (:func:`variants`).
#: Not sLSTM yet: its hand-written backward (the reference's, which the triton kernels follow) gives NaN
#: where autograd's gives +-inf for an infinite state (c0 = inf), a difference of operation order in the
#: gradients of c'/n' to be aligned with autograd's
VARIANTS = ("lstm", "lstm-proj", "lstm-peephole", "gru", "gru-reset-before", "rnn-tanh", "rnn-relu",
            "indrnn-relu", "indrnn-tanh", "layer-norm-lstm", "layer-norm-gru")
#: the cells without gates to saturate by scaling their weights: the normalised pre-activations do not
#: grow with the weights (their statistics overflow float32 instead)
UNSATURABLE = ("layer-norm-lstm", "layer-norm-gru")


def variants(backend: str):
    """The VARIANTS whose cell ``backend`` has kernels for (every one on the reference backend)."""
    runs = set(ft.kernel_variants(backend))
    return [v for v in VARIANTS if v in runs]


def own_kernels(variant: str) -> bool:
    """Whether a fused backend runs the variant's cell by kernels of its own, whatever the strategy asked for
    (IndRNN, the layer-normalised cells, sLSTM): one run is enough."""
    record = ft.VARIANTS[variant].cell.record
    return record.recurrent != "matrix" or bool(record.extra_weights) or variant == "slstm"
VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
#: the weights and biases of the gates (what saturation tests scale); peepholes and W_hr stay as drawn
GATE_WEIGHTS = ("w_ih", "w_hh", "b_ih", "b_hh")


def case(variant: str, shape: ft.Shape = SHAPE) -> ft.Case:
    return ft.Case(variant, shape, "padded")


def places(variant: str, shape: ft.Shape = SHAPE) -> List[str]:
    """Every input of the variant a special value can be written into (x only with a second step)."""
    c = case(variant)
    names = (["x"] if shape.T > 1 else []) + ["h0"] + (["c0"] if c.cell.has_cell_state else []) + list(GATE_WEIGHTS)
    if c.peephole:
        names.append("w_peep")
    if c.proj_size:
        names.append("w_proj")
    return names


def _spots(name: str, t: torch.Tensor, H: int) -> List[Tuple[int, ...]]:
    """Where a special value goes in input ``name``: one element of the data and states (it reaches
    every unit through the products), and in each gate block of a weight or bias one unit in the
    first vector of units and one in the tail."""
    if name == "x":
        return [(1, 0, 2)]  # the second step: its first step runs on finite values
    if name in ("h0", "c0"):
        return [(1, 5)]
    if name == "w_proj":
        return [(2, 5), (0, H - 2)]
    blocks = t.shape[0] // H
    units = [g * H + u for g in range(blocks) for u in (3 + g, H - 2)]
    return [(u,) if t.dim() == 1 else (u, 1) for u in units]


def with_value(problem: ft.Problem, name: str, value: float) -> ft.Problem:
    """A copy of ``problem`` with ``value`` written into input ``name`` at its spots."""
    out = copy.copy(problem)
    out.inputs = {k: v.clone() for k, v in problem.inputs.items()}
    t = out.inputs[name]
    for spot in _spots(name, t, problem.case.shape.H):
        t[spot] = value
    return out


def scaled(problem: ft.Problem, factor: float, dtype: torch.dtype) -> ft.Problem:
    """A copy of ``problem`` with the gate weights and biases times ``factor``, rounded to ``dtype`` (so
    the oracle sees the values the backend does)."""
    out = copy.copy(problem)
    out.inputs = {k: (v * factor).to(dtype).to(torch.float64) if k in GATE_WEIGHTS else v.clone()
                  for k, v in problem.inputs.items()}
    return out


def oracle(problem: ft.Problem, dtype: torch.dtype = torch.float64, device="cpu") -> ft.Results:
    """torch.nn in ``dtype`` where torch has the cell, else autograd through the reference in ``dtype``."""
    expected = ft.run_torch(problem, dtype, device)
    if expected is None:
        expected = ft.run_layer(problem, ft.reference_layer, dtype, device)
    return expected


#: the scales of the gate weights in the saturation tests: some gates saturated, all, all by far
SCALES = (1e3, 1e10, 1e30)
#: a longer sequence than the NaN tests: the gradient has steps to travel back through
SATURATION_SHAPE = ft.Shape(T=6, B=3, I=4, H=37)

#: Near-saturated gates (scale 1e3: pre-activations of a few tens) make the gradients ill-conditioned:
#: the derivative of a gate at pre-activation a moves by ~|a| times a rounding error of a, so float32
#: results carry errors set by the order the products and biases are summed in, not by the gate math.
#: torch.nn's own float32 gradients are off by up to 5e-3 of the float64 ones here, and one equally valid
#: order differs from another by a random factor: measured, summing b_ih + b_hh once (as the fused
#: kernels fold them) takes the reference's GRU gradient error from 6e-5 to 1.5e-4 (2.5x), the folded
#: strategy's single accumulation of x W_ih + h W_hh takes the RNN's from 9.5e-5 to 2.4e-4.  So the
#: float32 bound is 4x torch.nn's error (the harness's 2x rule, doubled for this spread) or 1e-5.
SATURATION_BASELINE_FACTOR = 4.0


def saturation_applies(variant: str, scale: float, shape: ft.Shape) -> bool:
    """Whether the saturation test of ``variant`` at ``scale`` has a defined float32 result.

    A ReLU (the Elman RNN's, IndRNN's) has no gate to saturate: its state grows like scale^t and leaves float32's range (3.4e38)
    at scale 1e10 after 4 steps.  Which partial sum overflows first then decides the result, and that
    depends on the order of the products (an FMA chain keeps the sign of the first overflow, so MKL
    gives +-inf where a sum of separately rounded products gives NaN): there is no float32 result to
    compare with.  Such pairs are left out of the grid, not skipped.
    """
    if variant in UNSATURABLE:
        return False
    return variant not in ("rnn-relu", "indrnn-relu") or scale ** shape.T <= 1e30


def saturation_oracle_and_baseline(problem: ft.Problem, dtype: torch.dtype):
    """The float64 oracle, and torch.nn in ``dtype`` as the baseline (see SATURATION_BASELINE_FACTOR)."""
    expected = oracle(problem)
    return expected, (None if dtype == torch.float64 else oracle(problem, dtype))


def run(problem: ft.Problem, backend: str, dtype: torch.dtype, device="cpu") -> ft.Results:
    return ft.run_layer(problem, ft.backend_layer(backend), dtype, device)


#: variants the cpu backend's "folded" strategy covers (the GRU has none: it would run "fused" twice)
FOLDED = ("lstm", "lstm-proj", "lstm-peephole", "rnn-tanh", "rnn-relu")
#: (backend, strategy or None, dtype): every path the CPU backends have
CPU_RUNS = [("cpu", s, torch.float32) for s in ("gemm", "fused", "folded")] + [("cpu", "gemm", torch.float64)] + [
    ("reference", None, d) for d in (torch.float32, torch.float64)]


def cpu_runs(variant: str):
    """The CPU_RUNS that apply to ``variant``, with an id each."""
    on_cpu = variant in variants("cpu")
    for backend, strategy, dtype in CPU_RUNS:
        if backend == "cpu" and not on_cpu:
            continue
        if strategy == "folded" and variant not in FOLDED:
            continue
        if own_kernels(variant) and strategy == "fused":  # one kernel whatever the strategy: once per dtype
            continue
        yield backend, strategy, dtype, backend + (f"-{strategy}" if strategy else "") + f"-{ft.dtype_name(dtype)}"


def run_on_cpu(problem: ft.Problem, backend: str, strategy: Optional[str], dtype: torch.dtype) -> ft.Results:
    """``run`` on the reference or cpu backend, the latter with ``strategy`` forced (restored after);
    skipped, with the reason, where the extension is not built and not required (FUSEDRNN_REQUIRE_EXTENSION)."""
    if backend != "cpu":
        return run(problem, backend, dtype)
    missing = backends.unavailable_reason("cpu")
    if missing is not None and os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") != "1":
        pytest.skip(f"the fused CPU kernels are not built: {missing}")
    cpu = backends.get("cpu")
    before = cpu.strategy
    try:
        cpu.strategy = strategy
        return run(problem, backend, dtype)
    finally:
        cpu.strategy = before


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error over the largest magnitude of ``expected``, at the positions finite in both."""
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    finite = torch.isfinite(actual) & torch.isfinite(expected)
    if not bool(finite.any()):
        return 0.0
    max_abs = float((actual[finite] - expected[finite]).abs().max())
    scale = float(expected[finite].abs().max())
    return max_abs / scale if scale > 0 else max_abs


def mismatches(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> List[str]:
    """What differs between two results of one quantity (empty: they agree)."""
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    found = []
    for kind, test in (("NaN", torch.isnan), ("+inf", lambda t: t == math.inf), ("-inf", lambda t: t == -math.inf)):
        a, e = test(actual), test(expected)
        if not torch.equal(a, e):
            where = (a != e).nonzero()[:3].tolist()
            found.append(f"{kind} at {int(a.sum())} positions, expected {int(e.sum())} (first differing: {where})")
    rel = relative_error(actual, expected)
    if rel > tolerance:
        found.append(f"finite values: relative error {rel:.2e} > {tolerance:.1e}")
    return found


def assert_agree(actual: ft.Results, expected: ft.Results, dtype: torch.dtype,
                 baseline: Optional[ft.Results] = None, baseline_factor: float = 2.0) -> None:
    """Every output and gradient agrees position by position (see the module docstring).

    ``baseline``: the same computation by torch.nn in ``dtype``; the tolerance is then
    max(dtype's tolerance, ``baseline_factor`` x the baseline's error against ``expected``): with the
    default 2, the harness's rule for a float32 baseline (fusedrnn.testing.tolerance).
    """
    problems: Dict[str, List[str]] = {}
    for name in expected:
        tolerance = ft.tolerance(dtype)
        if baseline is not None:
            tolerance = max(tolerance, baseline_factor * relative_error(baseline[name], expected[name]))
        found = mismatches(actual[name], expected[name], tolerance)
        if found:
            problems[name] = found
    assert not problems, "\n".join(f"{name}: {'; '.join(msgs)}" for name, msgs in problems.items())
