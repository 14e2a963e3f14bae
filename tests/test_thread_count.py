"""The ``cpu`` backend gives the same bits with 1 and 2 threads: every cell, strategy and gradient.

Work is split over threads by output element, never by summing parts of a
reduction from different threads, so the thread count cannot change a result.
The products through MKL were the exception (seen: LSTM and GRU gradients
differing by ~1e-6, LSTMP's too, RNN weight gradients by 3e-5, between
``torch.set_num_threads(1)`` and ``(2)``): MKL splits a long reduction (K of
about 1024 or more) over its threads.  They now run in output tiles fixed by
the shape, one single-threaded call each (csrc/cpu/dense_product.h).

Shapes: one with a per-step product of K = 4H = 1028 and a recurrence wide
enough for two threads (B=65, H=257), one with weight gradients summed over
T*B = 3200 rows with small H, and one with a single row per step.
"""

from __future__ import annotations

import os

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn import backends

REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
_WHY = backends.unavailable_reason("cpu")
if _WHY is not None and not REQUIRED:
    pytest.skip(f"the fused CPU kernels are not built in this checkout: {_WHY}", allow_module_level=True)

CPU = backends.get("cpu")
FOLDED = ("lstm", "lstm-peephole", "lstm-proj", "lstm-peephole-proj", "rnn-tanh", "rnn-relu")
SHAPES = (ft.Shape(3, 65, 5, 257), ft.Shape(200, 16, 8, 16), ft.Shape(20, 1, 128, 128))
RUNS = [("gemm", torch.float32), ("fused", torch.float32), ("folded", torch.float32), ("gemm", torch.float64)]

PARAMS = [
    pytest.param(ft.Case(v, shape, option), strategy, dtype,
                 id=f"{v}-{option}-{shape.label.replace(' ', '')}-{strategy}-{ft.dtype_name(dtype)}")
    for v in ft.kernel_variants("cpu")  # the cells the cpu backend has kernels for (IndRNN's included)
    for shape in SHAPES
    for option in ("padded", "packed-reverse")
    for strategy, dtype in RUNS
    if not (strategy == "folded" and v not in FOLDED)
]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case, strategy, dtype", PARAMS)
def test_one_and_two_threads_give_the_same_bits(case, strategy, dtype, restore_threads):
    problem = ft.make_problem(case, dtype)
    before = CPU.strategy
    CPU.strategy = strategy
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ft.run_layer(problem, ft.backend_layer("cpu"), dtype, "cpu"))
    finally:
        CPU.strategy = before
    one, two = results
    differing = {k: float((one[k] - two[k]).abs().max()) for k in one if not torch.equal(one[k], two[k])}
    assert not differing, f"1 vs 2 threads, max abs differences: {differing}"
