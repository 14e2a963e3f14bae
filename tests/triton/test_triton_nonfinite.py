"""NaN, +-inf and saturated gates on the ``triton`` backend: torch.nn's results, position by position.

The Triton twin of tests/test_nonfinite.py and tests/test_saturation.py (same
problems, oracle and comparison: tests/nonfinite_cases.py), float32, both
forward strategies the interpreter runs (``per_step``, ``persistent``; the
latter has no projection).  Seen before: the ReLU RNN's ``tl.maximum(a, 0)``
and its backward's ``where(h > 0, dh, 0)`` turned NaN into 0.

Runs on CPU tensors under the interpreter::

    TRITON_INTERPRET=1 python -m pytest tests/triton -m triton
"""

from __future__ import annotations


import pytest
import torch

pytestmark = pytest.mark.triton

from triton_support import DEVICE, skip_module_unless_kernels_run

skip_module_unless_kernels_run()

import fusedrnn.testing as ft  # noqa: E402
from fusedrnn import backends  # noqa: E402

import nonfinite_cases as nc  # noqa: E402

STRATEGIES = ("per_step", "persistent")
#: smaller than the CPU tests' shape (the interpreter takes seconds per case), still a whole 16-unit
#: tile and a partial one, and a second step for x's spot
SHAPE = ft.Shape(T=2, B=2, I=3, H=20)
SATURATION_SHAPE = ft.Shape(T=4, B=2, I=3, H=20)


@pytest.fixture
def triton_backend(monkeypatch):
    """The registered backend instance, its forward strategy restored after the test."""
    backend = backends.get("triton")
    monkeypatch.setattr(backend, "forward_strategy", backend.forward_strategy)
    return backend


def _strategies(variant):
    if nc.own_kernels(variant):
        return STRATEGIES[:1]  # one kernel whatever the strategy (fusedrnn/backends/triton.py, _OWN_KERNELS)
    # the persistent kernel takes no projection (sequence.choose_forward_strategy)
    return [s for s in STRATEGIES if not (s == "persistent" and ft.VARIANTS[variant].projection)]


NONFINITE = [pytest.param(v, place, value, s, id=f"{v}-{place}-{value}-{s}")
             for v in nc.variants("triton") for place in nc.places(v) for value in nc.VALUES for s in _strategies(v)]


@pytest.mark.parametrize("variant, place, value, strategy", NONFINITE)
def test_special_value_propagates_like_torch(variant, place, value, strategy, triton_backend):
    problem = nc.with_value(ft.make_problem(nc.case(variant, SHAPE), torch.float32), place, nc.VALUES[value])
    triton_backend.forward_strategy = strategy
    nc.assert_agree(nc.run(problem, "triton", torch.float32, DEVICE), nc.oracle(problem), torch.float32)


SATURATED = [pytest.param(v, scale, s, id=f"{v}-{scale:.0e}-{s}")
             for v in nc.variants("triton") for scale in nc.SCALES for s in _strategies(v)
             if nc.saturation_applies(v, scale, SATURATION_SHAPE)]


@pytest.mark.parametrize("variant, scale, strategy", SATURATED)
def test_saturated_gates_match_torch(variant, scale, strategy, triton_backend):
    problem = nc.scaled(ft.make_problem(nc.case(variant, SATURATION_SHAPE), torch.float32), scale, torch.float32)
    expected, baseline = nc.saturation_oracle_and_baseline(problem, torch.float32)
    triton_backend.forward_strategy = strategy
    nc.assert_agree(nc.run(problem, "triton", torch.float32, DEVICE), expected, torch.float32, baseline,
                    nc.SATURATION_BASELINE_FACTOR)
