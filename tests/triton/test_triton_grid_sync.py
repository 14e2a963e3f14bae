"""The grid-synchronised forward kernel and the concurrent launcher that runs it under the interpreter.

``forward_grid_sync_kernel`` (fusedrnn/triton_kernels/recurrence.py) keeps the
hidden tiles on programs that exchange h through memory and meet at a grid
barrier each step.  Triton's interpreter runs the programs of a grid one
after another, which would leave the first one waiting at the barrier
forever; fusedrnn/triton_kernels/concurrent_grid.py runs them in threads,
passing the turn at each atomic by a seeded schedule.  Here:

* what the kernel computes, through the ops, against the float64 reference
  and torch.nn by the tolerances of :mod:`fusedrnn.testing` (float32 1e-5,
  float16/bfloat16 the 2x rule): outputs, final states and every gradient
  (its workspace feeds the per-step backward), for every cell it takes
  (no projection), padded and packed, both directions, T=1, and sizes
  around its tiles (H=37: three programs, the last 5 columns wide; H=33:
  one column in the last; H=16: one program; B=17: two batch tiles);
* NaN and inf in h0, which every program reads through the exchange buffer;
* the launcher: programs that wait on each other finish; a barrier that
  never opens raises at once, a program that neither waits nor ends raises
  at the timeout, a failing program raises with its id, none of them
  hangs the run, and a schedule reproduces from its seed;
* that these tests can fail: with a planted barrier bug (programs that do
  not wait, or that wait for one arrival too few) the kernel's results
  differ from the reference.

test_triton_backend.py compares the forward's outputs and workspace with the
reference for every cell and layout, once per strategy (``grid_sync``
included).  The launcher's own tests need the interpreter (they plant Python
functions in the kernel); the comparisons also run on a GPU.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

pytestmark = pytest.mark.triton

from triton_support import DEVICE, INTERPRETING, assert_passed, skip_module_unless_kernels_run

skip_module_unless_kernels_run()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import fusedrnn.testing as ft  # noqa: E402
from fusedrnn import backends, reference  # noqa: E402
from fusedrnn.backends.base import LayerWeights  # noqa: E402
from fusedrnn.triton_kernels import recurrence, sequence  # noqa: E402

import nonfinite_cases as nc  # noqa: E402

interpreter_only = pytest.mark.skipif(not INTERPRETING, reason="the concurrent launcher and planted Python "
                                                               "functions exist only under the interpreter")
if INTERPRETING:
    from triton.runtime import interpreter
    from triton.runtime.errors import InterpreterError

    from fusedrnn.triton_kernels import concurrent_grid

VARIANTS = [v for v in ft.kernel_variants() if not ft.VARIANTS[v].projection]  # grid_sync takes no projection
SHAPE = ft.Shape(T=7, B=5, I=3, H=37)
SINGLE_STEP = ft.Shape(T=1, B=5, I=3, H=37)
TWO_BATCH_TILES = ft.Shape(T=3, B=17, I=3, H=33)
ONE_PROGRAM = ft.Shape(T=3, B=5, I=3, H=16)
SPECIAL_VALUE_SHAPE = ft.Shape(T=2, B=2, I=3, H=20)  # two programs, the second 4 columns wide


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer a sequence driver allocates starts as NaN, so an element no program writes fails."""
    monkeypatch.setattr(sequence, "POISON", True)


@pytest.fixture
def grid_sync(monkeypatch):
    """The registered triton backend, running the grid-synchronised forward for this test."""
    backend = backends.get("triton")
    monkeypatch.setattr(backend, "forward_strategy", "grid_sync")
    return backend


@pytest.fixture(scope="module")
def checker():
    return ft.Checker(DEVICE)


# ----------------------------------------------------------------------------
# The kernel against the oracles: outputs, states and gradients
# ----------------------------------------------------------------------------

#: each family in float32 (packed, reverse), every cell in one 16-bit dtype, then sizes at the edges of the tiles
#: (test_triton_backend.py compares the forward of every cell and layout in float32)
CASES = [(v, SHAPE, "packed-reverse", torch.float32) for v in ("lstm-peephole", "gru-reset-before", "rnn-tanh")] + \
        [(v, SHAPE, "reverse", d) for v, d in zip(VARIANTS, itertools.cycle((torch.bfloat16, torch.float16)))] + \
        [(v, SINGLE_STEP, "padded", torch.float32) for v in ("lstm-peephole", "gru-reset-before")] + \
        [(v, TWO_BATCH_TILES, "packed", torch.float32) for v in ("lstm", "gru-reset-before")] + \
        [(v, ONE_PROGRAM, "no-bias", torch.float32) for v in ("gru", "rnn-relu")]


@pytest.mark.parametrize("variant,shape,option,dtype", CASES,
                         ids=[f"{v}-{o}-T{s.T}-B{s.B}-H{s.H}-{ft.dtype_name(d)}" for v, s, o, d in CASES])
def test_outputs_and_gradients_match_the_oracles(variant, shape, option, dtype, checker, grid_sync):
    assert_passed(checker.check("triton", ft.Case(variant, shape, option), dtype))


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_special_value_in_h0_propagates_like_torch(variant, value, grid_sync):
    """inf in h0 meets the zero-padded columns of the exchanged tiles (inf * 0 would be NaN there)."""
    problem = nc.with_value(ft.make_problem(nc.case(variant, SPECIAL_VALUE_SHAPE), torch.float32), "h0",
                            nc.VALUES[value])
    nc.assert_agree(nc.run(problem, "triton", torch.float32, DEVICE), nc.oracle(problem), torch.float32)


def test_auto_leaves_grid_sync_opt_in_for_large_hidden():
    """Until it has run on a GPU (sequence.choose_forward_strategy says why), auto takes the per-step kernel."""
    cell = ft.VARIANTS["lstm"].cell
    H = 1024
    weights = LayerWeights(torch.empty(1).expand(4 * H, 8), torch.empty(1).expand(4 * H, H), None, None, None, None)
    x = torch.empty(1, 1, 8, device=DEVICE)
    assert sequence.choose_forward_strategy(cell, x, weights) == "per_step"


def test_projection_is_refused():
    inputs = ft.make_problem(ft.Case("lstm-proj", SINGLE_STEP, "padded")).inputs
    weights = LayerWeights(*(inputs.get(n) for n in ft.INPUTS[3:]))
    with pytest.raises(ValueError, match="grid-synchronised kernel needs no projection"):
        sequence.choose_forward_strategy(ft.VARIANTS["lstm-proj"].cell, inputs["x"], weights, "grid_sync")


# ----------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------


@triton.jit
def _exchange_kernel(COUNTER, SLOTS, OUT, ROUNDS: tl.constexpr, MISSING: tl.constexpr):
    """Each round every program writes its slot, meets the others at the barrier (``MISSING`` arrivals
    short of all of them) and reads its right neighbour's slot."""
    pid = tl.program_id(0)
    n = tl.num_programs(0)
    for r in range(ROUNDS):
        tl.store(SLOTS + r * n + pid, r * n + pid)
        recurrence.grid_barrier(COUNTER, (r + 1) * n - MISSING)
        tl.store(OUT + r * n + pid, tl.load(SLOTS + r * n + (pid + 1) % n))


@triton.jit
def _busy_kernel(X):
    """Writes forever: never waits, never ends."""
    i = 0
    while i >= 0:
        tl.store(X, i)
        i += 1


@triton.jit
def _failing_kernel(COUNTER, FAILING: tl.constexpr):
    """Program ``FAILING`` fails before the barrier; the others wait there for it."""
    if tl.program_id(0) == FAILING:
        tl.static_assert(False, "planted failure")
    recurrence.grid_barrier(COUNTER, tl.num_programs(0))


PROGRAMS, ROUNDS = 5, 3
SEEDS = range(4)


def _exchange(missing: int, seed: int, programs: int = PROGRAMS, **launch_options):
    """``_exchange_kernel``'s reads (-1: a slot read before its program wrote it), and what they should be."""
    counter = torch.zeros(1, dtype=torch.int32)
    slots = torch.full((ROUNDS, programs), -1, dtype=torch.int32)
    out = torch.empty_like(slots)
    concurrent_grid.launch(_exchange_kernel, (programs,), counter, slots, out, ROUNDS=ROUNDS, MISSING=missing,
                           seed=seed, **launch_options)
    written = torch.arange(ROUNDS * programs, dtype=torch.int32).view(ROUNDS, programs)
    return out, written.roll(-1, dims=1)


@interpreter_only
@pytest.mark.parametrize("seed", SEEDS)
def test_programs_that_wait_on_each_other_finish(seed):
    out, expected = _exchange(missing=0, seed=seed)
    assert torch.equal(out, expected)


@interpreter_only
def test_a_barrier_one_arrival_short_lets_a_program_read_too_early():
    """The launcher interleaves programs enough that a barrier counting wrong shows, for some seed."""
    assert any(not torch.equal(*_exchange(missing=1, seed=seed)) for seed in SEEDS)


@interpreter_only
def test_a_schedule_reproduces_from_its_seed():
    runs = [_exchange(missing=1, seed=seed)[0] for seed in (*SEEDS, *SEEDS)]
    assert all(torch.equal(a, b) for a, b in zip(runs[:len(SEEDS)], runs[len(SEEDS):]))
    assert any(not torch.equal(runs[0], run) for run in runs[1:len(SEEDS)]), "the seed does not change the schedule"


@interpreter_only
def test_a_barrier_that_never_opens_raises_at_once():
    started = time.monotonic()
    with pytest.raises(concurrent_grid.GridHang, match=r"_exchange_kernel: programs .* all wait and none can go on"):
        _exchange(missing=-1, seed=0, timeout_s=120)  # waits for one program more than there are
    assert time.monotonic() - started < 60, "found by the timeout, not by seeing every program wait"
    _assert_builder_restored()


@interpreter_only
def test_a_program_that_never_ends_raises_at_the_timeout():
    with pytest.raises(concurrent_grid.GridHang, match=r"_busy_kernel: 3 of 3 programs still running after 0.5 s"):
        concurrent_grid.launch(_busy_kernel, (3,), torch.zeros(1, dtype=torch.int32), timeout_s=0.5)
    _assert_builder_restored()


@interpreter_only
def test_a_failing_program_stops_the_launch_and_is_named():
    with pytest.raises(InterpreterError, match=r"_failing_kernel program \(1, 0, 0\):.*planted failure"):
        concurrent_grid.launch(_failing_kernel, (3,), torch.zeros(1, dtype=torch.int32), FAILING=1, timeout_s=120)
    _assert_builder_restored()


def _assert_builder_restored():
    """The interpreter is as it was: its builder without the launcher's hooks, kernels launch as usual."""
    assert not {n for n in vars(interpreter.interpreter_builder) if n.startswith("create_")}
    out, expected = _exchange(missing=0, seed=0, programs=1)  # one program: no waiting, any launcher
    assert torch.equal(out, expected)


# ----------------------------------------------------------------------------
# Planted barrier bugs in the kernel: the comparison with the reference fails
# ----------------------------------------------------------------------------


def _arrive_without_waiting(COUNTER, target):
    tl.atomic_add(COUNTER, 1, sem="release", scope="gpu")


def _wait_for_one_arrival_fewer(COUNTER, target, _barrier=recurrence.grid_barrier):
    _barrier(COUNTER, target - 1)


@interpreter_only
@pytest.mark.parametrize("bug", [_arrive_without_waiting, _wait_for_one_arrival_fewer], ids=lambda f: f.__name__)
@pytest.mark.parametrize("variant", ["lstm", "gru-reset-before"])
def test_a_planted_barrier_bug_fails_the_comparison(variant, bug, grid_sync, monkeypatch):
    v = ft.VARIANTS[variant]
    problem = ft.make_problem(ft.Case(variant, SHAPE, "padded"), torch.float32)
    x, h0, c0, *w = (None if n not in problem.inputs else problem.inputs[n].float() for n in ft.INPUTS)
    expected = reference.sequence_forward(v.cell, x, h0, c0, LayerWeights(*w), None, False)
    monkeypatch.setattr(recurrence, "grid_barrier", bug)

    def agrees(seed):
        monkeypatch.setattr(concurrent_grid, "SEED", seed)
        actual = grid_sync.forward(v.cell, x, h0, c0, LayerWeights(*w), None, False)
        return torch.allclose(actual.out, expected.out, rtol=1e-5, atol=1e-5)

    assert not all(agrees(seed) for seed in SEEDS)
