"""NaN and +-inf in any input give torch.nn's results, position by position, on the CPU backends.

One special value (NaN, +inf or -inf) is written at a few spots of one input
(x, h0, c0, a weight or bias, the peepholes, the projection) of every cell,
over three steps and over one;
the outputs, final states and the gradients of every input must have NaN
exactly where torch.nn has NaN, the same infinities, and finite values close
(tests/nonfinite_cases.py).  Seen before: ReLU RNNs turned NaN into 0 (`x > 0 ?
x : 0`), and LSTMs without peepholes multiplied an infinite gradient by the
absent peephole's 0.

The ``cpu`` backend runs every strategy (gemm, fused, folded) in float32 and
its gemm strategy in float64 (the only one for float64); the ``reference``
backend (its hand-written backward) runs in both dtypes.  The Triton twin is
tests/triton/test_triton_nonfinite.py.
"""

from __future__ import annotations

import pytest

import fusedrnn.testing as ft
import nonfinite_cases as nc

pytestmark = pytest.mark.usefixtures("single_thread")


def _params():
    for shape in (nc.SHAPE, nc.SINGLE_STEP):
        for variant in nc.VARIANTS:
            for place in nc.places(variant, shape):
                for value in nc.VALUES:
                    for backend, strategy, dtype, run_id in nc.cpu_runs(variant):
                        yield pytest.param(variant, shape, place, value, backend, strategy, dtype,
                                           id=f"{variant}-T{shape.T}-{place}-{value}-{run_id}")


@pytest.fixture(scope="module")
def oracles():
    """Oracle results per (variant, place, value, dtype), shared by the runs."""
    return {}


@pytest.mark.parametrize("variant, shape, place, value, backend, strategy, dtype", list(_params()))
def test_special_value_propagates_like_torch(oracles, variant, shape, place, value, backend, strategy, dtype):
    key = (variant, shape, place, value, dtype)
    if key not in oracles:
        problem = nc.with_value(ft.make_problem(nc.case(variant, shape), dtype), place, nc.VALUES[value])
        oracles[key] = (problem, nc.oracle(problem))
    problem, expected = oracles[key]
    actual = nc.run_on_cpu(problem, backend, strategy, dtype)
    nc.assert_agree(actual, expected, dtype)
