"""Saturated gates give torch.nn's outputs and gradients on the CPU backends.

The gate weights and biases of every cell are scaled by 1e3 (most gates
saturated, some not), 1e10 and 1e30 (all saturated); the ReLU RNN, which has
no gate and overflows float32 at the larger scales, only where its result is
defined (nonfinite_cases.saturation_applies).  torch's sigmoid is
exactly 0 below about -88.7 (exp overflows) and its derivative y*(1-y) then
exactly 0, so nothing flows back through a closed gate, however large the
weights behind it.  Seen before: the float32 sigmoid floored at 1.8e-35, whose
derivative times weights of 1e30 gave an LSTM input gradient of 2.5e18 where
torch.nn's is 0.26, and NaN/inf in GRU gradients where torch.nn's are finite.

Compared position by position with torch.nn in float64 (the reference where
torch has no such cell): no NaN or inf where it has none, finite values within
the dtype's tolerance (tests/nonfinite_cases.py); in float32, or 4x torch.nn's
own float32 error where that is larger (nonfinite_cases.SATURATION_BASELINE_FACTOR
says why).  The Triton twin is in
tests/triton/test_triton_nonfinite.py.
"""

from __future__ import annotations

import pytest

import fusedrnn.testing as ft
import nonfinite_cases as nc

pytestmark = pytest.mark.usefixtures("single_thread")

PARAMS = [
    pytest.param(variant, scale, backend, strategy, dtype, id=f"{variant}-{scale:.0e}-{run_id}")
    for variant in nc.VARIANTS
    for scale in nc.SCALES
    for backend, strategy, dtype, run_id in nc.cpu_runs(variant)
    if nc.saturation_applies(variant, scale, nc.SATURATION_SHAPE)
]


@pytest.mark.parametrize("variant, scale, backend, strategy, dtype", PARAMS)
def test_saturated_gates_match_torch(variant, scale, backend, strategy, dtype):
    problem = nc.scaled(ft.make_problem(nc.case(variant, nc.SATURATION_SHAPE), dtype), scale, dtype)
    expected, baseline = nc.saturation_oracle_and_baseline(problem, dtype)
    actual = nc.run_on_cpu(problem, backend, strategy, dtype)
    nc.assert_agree(actual, expected, dtype, baseline, nc.SATURATION_BASELINE_FACTOR)
