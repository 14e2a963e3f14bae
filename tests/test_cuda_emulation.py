"""The CUDA emulation (csrc/emulation): the emulator itself, then the ``cuda``
backend through it (``FUSEDRNN_CUDA_EMULATE=1``, CPU tensors) against the
float64 reference and torch.nn with :mod:`fusedrnn.testing`.

The first part runs the emulator's self-test kernels (csrc/emulation/selftest.cu,
plain CUDA: tests/test_cuda_compile.py compiles it with nvcc) to show that it behaves as a GPU does where the kernels depend on
it (barriers, grid.sync, warp intrinsics, WMMA, atomics, 16-bit conversions,
launch limits) and that the bugs it exists to find are found: a missing
barrier gives a wrong result, a barrier in divergent code or a deadlock is an
error naming the kernel (at once, not after a timeout), a spin-wait that never
ends times out.  Under the sanitizer builds (``make emu-asan``, ``make
emu-tsan``) two more tests show that an out-of-bounds shared-memory read and a
missing barrier are reported.

The second part is the whole :mod:`fusedrnn.testing` grid on the emulated
backend: every cell variant and layout option, float32, float16 and bfloat16,
both forward strategies (``per_step`` everywhere, ``persistent`` where the cell
has that kernel), odd sizes, a single step and sizes for the vector path;
tolerances are fusedrnn.testing's (float32 1e-5 relative, 16-bit at most twice
the error of the reference backend run in that dtype).  tests/test_cuda_backend.py
runs its own cases (poisoned buffers, schedules, argument errors) in emulation too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import _extension, backends
from fusedrnn.backends import cuda as cuda_backend
from fusedrnn.backends.base import LayerWeights

import nonfinite_cases as nc

pytestmark = pytest.mark.usefixtures("single_thread")


def emulation_expected() -> bool:
    """Where setup.py builds the emulation (Linux, torch without CUDA, the extension built, not opted out),
    it must load."""
    return (sys.platform.startswith("linux") and torch.version.cuda is None and _extension.load() is not None
            and os.environ.get("FUSEDRNN_NO_EMULATION") != "1")


@pytest.fixture(autouse=True)
def emulate(monkeypatch):
    """FUSEDRNN_CUDA_EMULATE=1 for every test here; skip (with the reason) where the emulation is not built."""
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "1")
    why = backends.unavailable_reason("cuda")
    if why is not None:
        if emulation_expected():
            pytest.fail(f"the CUDA emulation should have been built here but is unavailable: {why}")
        pytest.skip(why)


@pytest.fixture
def emu():
    return cuda_backend.load_emulation()


@pytest.fixture
def st(emu):
    return emu.selftest


@pytest.fixture
def schedule(request, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_EMU_SCHEDULE", request.param)
    return request.param


SCHEDULES = ["forward", "reverse", "shuffle:7"]

# ----------------------------------------------------------------------------
# the emulator: barriers, grid.sync, deadlocks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES, indirect=True)
@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_block_barriers_make_a_tree_sum_right(st, schedule, threads):
    x = torch.randint(-1000, 1000, (3 * threads,)).float()  # integers: the sum is exact in any order
    out = st.block_sum(x, threads, True, threads * 4, False)
    assert torch.equal(out, x.view(3, threads).sum(1))


def skip_deliberate_race(emu):
    if emu.sanitizer() == "thread":  # it would stop the run; test_thread_sanitizer_sees_a_missing_barrier runs one
        pytest.skip("a deliberate race: under ThreadSanitizer it runs in a subprocess "
                    "(test_thread_sanitizer_sees_a_missing_barrier)")


def test_a_missing_barrier_gives_a_wrong_result(st, emu):
    """Without its barriers the tree reads what the other threads have not written yet
    (shared memory starts as NaN, as garbage would on a GPU)."""
    skip_deliberate_race(emu)
    x = torch.ones(256)
    assert torch.equal(st.block_sum(x, 256, True, 1024, False), torch.tensor([256.0]))
    assert not torch.equal(st.block_sum(x, 256, False, 1024, False), torch.tensor([256.0]))


def test_a_barrier_in_divergent_code_is_an_error(st):
    with pytest.raises(RuntimeError, match=r"kernel divergent_barrier_kernel .*__syncthreads\(\) reached by 16 "
                                           r"threads of block \(0,0,0\) while 240 had exited"):
        st.divergent_barrier(256, 16)
    st.divergent_barrier(256, 256)  # every thread: fine


def test_a_deadlock_is_reported_at_once_with_the_kernel_name(st, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_EMU_TIMEOUT", "600")  # found without waiting for the timeout
    with pytest.raises(RuntimeError, match=r"kernel deadlock_kernel .*deadlock: no thread can continue; block "
                                           r"\(0,0,0\): 63 at __syncthreads, 1 at grid.sync"):
        st.deadlock(64)


@pytest.mark.parametrize("schedule", SCHEDULES, indirect=True)
def test_grid_sync_orders_the_blocks_of_a_cooperative_launch(st, schedule):
    assert st.grid_exchange(5, True, True).tolist() == [2, 3, 4, 5, 1]


def test_a_missing_grid_sync_gives_a_wrong_result(st, emu):
    """Block barriers alone do not order blocks: a block runs ahead and reads its neighbour's slot unwritten."""
    skip_deliberate_race(emu)
    assert st.grid_exchange(5, False, True).tolist() != [2, 3, 4, 5, 1]


def test_grid_sync_needs_a_cooperative_launch(st):
    with pytest.raises(RuntimeError, match="grid_exchange_kernel.*not launched cooperatively"):
        st.grid_exchange(2, True, False)


def test_a_cooperative_grid_must_fit_on_the_device(st, emu):
    before = emu.set_device_properties(multiprocessors=2, max_blocks_per_multiprocessor=2)
    try:
        assert st.grid_exchange(4, True, True).tolist() == [2, 3, 4, 1]
        with pytest.raises(RuntimeError, match="too many blocks in cooperative launch"):
            st.grid_exchange(5, True, True)
    finally:
        emu.set_device_properties(**before)


def test_launch_limits_are_a_gpus(st):
    x = torch.ones(256)
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        st.block_sum(torch.ones(2048), 2048, True, 2048 * 4, False)  # more than 1024 threads
    with pytest.raises(RuntimeError, match="invalid argument"):
        st.block_sum(x, 256, True, 64 * 1024, False)  # above 48 KB without the opt-in
    assert st.block_sum(x, 256, True, 64 * 1024, True).item() == 256.0
    with pytest.raises(RuntimeError, match="invalid argument"):
        st.block_sum(x, 256, True, 300 * 1024, True)  # above the device's opt-in limit


def test_shared_memory_starts_as_garbage(st):
    assert st.read_shared(16, 3) == 0xFF  # every float / 16-bit float in it is a NaN


# ----------------------------------------------------------------------------
# warps, WMMA, atomics, 16-bit conversions
# ----------------------------------------------------------------------------


def _expected_warp_ops(v):
    """The warp intrinsics of selftest.cu's warp_ops_kernel, by their CUDA definitions."""
    out = []
    for t, x in enumerate(v):
        lane, base = t % 32, t - t % 32
        w = v[base:base + 32]
        seg = lane - lane % 8
        out.append([
            w[3],
            w[lane - 1] if lane >= 1 else x,
            w[lane + 2] if lane + 2 < 32 else x,
            w[lane ^ 5],
            sum(w),
            sum(1 << i for i, y in enumerate(w) if y % 3 == 0) - (1 << 32 if w[31] % 3 == 0 else 0),
            int(any(y == 7 for y in w)) + 2 * int(all(y >= 0 for y in w)),
            w[lane + 1] if lane + 1 < seg + 8 else x,
            w[0] if lane < 16 else w[16],
        ])
    return out


@pytest.mark.parametrize("schedule", SCHEDULES, indirect=True)
def test_warp_shuffles_and_votes(st, schedule):
    v = torch.randint(-20, 20, (64,), dtype=torch.int32)
    v[5] = 7
    assert st.warp_ops(v).tolist() == _expected_warp_ops(v.tolist())


def test_warp_calls_need_every_lane_of_their_mask(st):
    with pytest.raises(RuntimeError, match=r"divergent_warp_kernel.*lane 16 exited while lanes of its mask "
                                           r"0xffffffff wait in __syncwarp"):
        st.divergent_warp()
    with pytest.raises(RuntimeError, match="naming lanes the block does not have"):
        st.warp_ops(torch.zeros(48, dtype=torch.int32))  # a partial warp, full masks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("layouts", [(a, b, c, d) for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1)],
                         ids=lambda ls: "".join("rc"[1 - x] for x in ls))
def test_wmma_tile_product(st, dtype, layouts):
    """d = a b + c on a 16x16x16 tile, each matrix row- or column-major with padded rows, against float64."""
    a_row, b_row, c_row, d_row = map(bool, layouts)
    g = torch.Generator().manual_seed(sum(x << i for i, x in enumerate(layouts)))
    A, B, C = (torch.randn(16, 16, generator=g) for _ in range(3))
    A, B = A.to(dtype), B.to(dtype)

    def stored(m, row_major, ld, like):  # [16, ld]: rows (row-major) or columns (column-major), padding after
        buf = torch.full((16, ld), float("nan"), dtype=like)
        buf[:, :16] = m if row_major else m.t()
        return buf

    d = torch.full((16, 20), float("nan"))
    st.wmma(stored(A, a_row, 24, dtype), stored(B, b_row, 24, dtype), stored(C, c_row, 20, torch.float32), d, a_row,
            b_row, c_row, d_row, 0)
    D = d[:, :16] if d_row else d[:, :16].t()
    expected = A.double() @ B.double() + C.double()
    torch.testing.assert_close(D.double(), expected, rtol=1e-5, atol=1e-5)  # float32 accumulation of 16 terms


def test_wmma_pointers_must_be_aligned(st):
    a = torch.zeros(16, 40, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="wmma::load_matrix_sync: pointer .* is not 256-bit aligned"):
        st.wmma(a, a.clone(), torch.zeros(16, 16), torch.zeros(16, 16), True, True, True, True, 8)


def test_atomics_and_a_spin_wait_on_one(st):
    counter, fsum, seen = st.atomics(256)
    assert (counter, fsum, seen) == (256, 128.0, 256)


def test_a_spin_wait_that_never_ends_times_out(st, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_EMU_TIMEOUT", "0.2")
    with pytest.raises(RuntimeError, match="spin_forever_kernel .*no barrier, warp operation or thread exit "
                                           "completed for FUSEDRNN_EMU_TIMEOUT=0.2 s"):
        st.spin_forever()


def _special_floats():
    values = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e6, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25,
              1.5 * 2.0 ** -25, 2.0 ** -26, 3.0 * 2.0 ** -25, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
              1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 3.4e38, 1e-40, float("inf"), float("-inf")]
    return torch.tensor(values + [-v for v in values], dtype=torch.float32)


def test_16_bit_conversions_round_like_torch(st):
    """float32 -> float16 / bfloat16 (round to nearest even; overflow, subnormals) and back, by the kernels'
    conversion helpers, against torch's; every 16-bit pattern back to float32."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), _special_floats(), torch.randn(10_000, generator=g) * 1e-5])
    finite = ~x.isnan()
    h, b = st.narrow(x)
    assert torch.equal(h[finite], x[finite].half().view(torch.int16))
    assert torch.equal(b[finite], x[finite].bfloat16().view(torch.int16))
    assert bool((h[~finite] == 0x7FFF).all() and (b[~finite] == 0x7FFF).all())  # the canonical NaN
    every = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    fh, fb = st.widen(every, every)
    torch.testing.assert_close(fh, every.view(torch.float16).float(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(fb, every.view(torch.bfloat16).float(), rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------
# sanitizers: what they add (run under make emu-asan / emu-tsan)
# ----------------------------------------------------------------------------


def _in_subprocess(code: str):
    """Run ``code`` in a fresh interpreter with this process's environment (and sanitizer runtime)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, FUSEDRNN_CUDA_EMULATE="1"))


SELFTEST = "from fusedrnn.backends import cuda; import torch; st = cuda.load_emulation().selftest\n"


def test_address_sanitizer_sees_an_out_of_bounds_shared_memory_read(emu):
    if emu.sanitizer() != "address":
        pytest.skip("needs the AddressSanitizer build of the emulation (make emu-asan)")
    clean = _in_subprocess(SELFTEST + "st.read_shared(16, 15)")
    assert clean.returncode == 0, clean.stderr
    bad = _in_subprocess(SELFTEST + "st.read_shared(16, 16)")
    assert bad.returncode != 0 and "heap-buffer-overflow" in bad.stderr, bad.stderr[-3000:]


def test_thread_sanitizer_sees_a_missing_barrier(emu):
    if emu.sanitizer() != "thread":
        pytest.skip("needs the ThreadSanitizer build of the emulation (make emu-tsan)")
    clean = _in_subprocess(SELFTEST + "st.block_sum(torch.ones(256), 256, True, 1024, False)")
    assert clean.returncode == 0 and "ThreadSanitizer" not in clean.stderr, clean.stderr[-3000:]
    racy = _in_subprocess(SELFTEST + "st.block_sum(torch.ones(256), 256, False, 1024, False)")
    assert "ThreadSanitizer: data race" in racy.stderr and "block_sum_kernel" in racy.stderr, racy.stderr[-3000:]


# ----------------------------------------------------------------------------
# the cuda backend through the emulation
# ----------------------------------------------------------------------------

CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# odd sizes; a single step; H a multiple of 16 (the pointwise kernels' 16-byte
# vector path, whole WMMA tiles) with B=16 (a whole row tile)
KERNELS = ft.kernel_variants("cuda")  # the cells the cuda backend has kernels for (IndRNN's included)
GRID = (
    ft.cases(KERNELS, shapes=[(7, 5, 3, 37)])
    + ft.cases(KERNELS, shapes=[(1, 5, 3, 37)], options=["padded", "packed-reverse"])
    + ft.cases(KERNELS, shapes=[(4, 16, 8, 64)], options=["padded", "packed-reverse"])
)


def strategies(variant):
    """Every matrix cell has both strategies; IndRNN one kernel whatever is asked (csrc/cuda/diagonal.cu)."""
    if ft.VARIANTS[variant].cell.record.recurrent == "diagonal":
        return ("per_step",)
    return ("per_step", "persistent")


PARAMS = [
    pytest.param(case, dtype, strategy, id=f"{case.id}-{ft.dtype_name(dtype)}-{strategy}")
    for case in GRID
    for dtype in CUDA_DTYPES
    for strategy in strategies(case.variant)
]


@pytest.fixture
def strategy(request):
    """Force the cuda backend's forward and backward strategy for one test (restored after)."""
    backend = backends.get("cuda")
    before = backend.forward_strategy, backend.backward_strategy
    backend.forward_strategy = backend.backward_strategy = request.param
    yield request.param
    backend.forward_strategy, backend.backward_strategy = before


@pytest.fixture(scope="module")
def checker():
    """One Checker for the module: oracle and baseline runs are shared by the strategies and dtypes."""
    return ft.Checker("cpu")


@pytest.mark.parametrize("case, dtype, strategy", PARAMS, indirect=["strategy"])
def test_matches_reference_and_torch_nn(checker, case, dtype, strategy):
    """Outputs, final states and the gradients of every input, against both oracles."""
    outcome = checker.check("cuda", case, dtype)
    assert outcome.skipped is None, outcome.skipped
    assert outcome.passed, str(outcome)


MODULE_PARAMS = [
    pytest.param(case, dtype, id=f"{case.id}-{ft.dtype_name(dtype)}")
    for case in ft.module_cases(shapes=[(6, 5, 3, 37)])
    for dtype in CUDA_DTYPES
]


@pytest.mark.parametrize("case, dtype", MODULE_PARAMS)
def test_whole_modules_match_torch_nn(checker, case, dtype):
    """Two-layer bidirectional modules on packed input, strategy auto (persistent where it exists)."""
    outcome = checker.check("cuda", case, dtype)
    assert outcome.skipped is None, outcome.skipped
    assert outcome.passed, str(outcome)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=ft.dtype_name)
@pytest.mark.parametrize("variant", ["rnn-relu", "rnn-tanh", "gru", "lstm"])
def test_persistent_16_bit_forward_keeps_h_to_float32_accuracy(variant, dtype):
    """The persistent forward in 16 bits feeds h to the tensor cores as hi + lo (csrc/cuda/README.md,
    Numerics), so it is the float64 recurrence with the unrounded h, its outputs rounded once.
    Found by the emulation: with h rounded to 16 bits before the product, a bfloat16 ReLU
    pre-activation within a rounding of 0 took the other side of the kink than in the reference
    (and torch.nn), and the gradient through it missed the checker's 2x rule."""
    case = ft.Case(variant, (7, 5, 3, 37), "padded")
    p = ft.make_problem(case, dtype)
    x, h0, c0 = p.inputs["x"], p.inputs["h0"], p.inputs.get("c0")
    w = [p.inputs[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    out, h_n, c_n, _ = torch.ops.fusedrnn_cuda_emulation.forward(
        case.cell.family, case.cell.mode, x.to(dtype), h0.to(dtype), None if c0 is None else c0.to(dtype),
        *(t.to(dtype) for t in w), None, None, None, False, "persistent", True)
    expected = fusedrnn.reference.sequence_forward(case.cell, x, h0, c0, LayerWeights(*w), None, False).out
    unit = ft.UNIT_ROUNDOFF[dtype]  # the output's one rounding, and float32 arithmetic next to float64's
    torch.testing.assert_close(out.double(), expected, rtol=2 * unit, atol=1e-6)
    if variant == "rnn-relu":  # the same side of every kink
        assert torch.equal(out == 0, expected == 0)


def test_report_says_it_is_the_emulation():
    line = [ln for ln in fusedrnn.report().splitlines() if ln.startswith("cuda:")][0]
    assert line.startswith("cuda: available (CPU emulation of the CUDA kernels (FUSEDRNN_CUDA_EMULATE=1)"), line


def test_auto_never_picks_the_emulation():
    assert "cuda" not in backends.AUTO_PREFERENCE["cpu"]
    assert backends.resolve(None, fusedrnn.CellSpec("lstm", "lstm"), torch.randn(4, 2, 3), None).name != "cuda"


def test_cuda_tensors_are_not_for_the_emulation():
    backend = backends.get("cuda")
    fake = type("T", (), {"device": torch.device("cuda"), "dtype": torch.float32})()
    assert "runs CPU tensors only" in backend.unsupported(fusedrnn.CellSpec("lstm", "lstm"), fake, None)
    assert backend.unsupported(fusedrnn.CellSpec("lstm", "lstm"), torch.zeros(1), None) is None


def test_the_cuda_kernels_refuse_slstm_by_name(emu):
    """sLSTM has cpu and triton kernels, no CUDA ones: the ops (and the strategy query) say so by name rather than
    run its block-diagonal w_hh as a matrix; the backend does not list it, so "auto" never sends it here."""
    H, heads = 8, 2
    x, h0, c0 = torch.randn(3, 2, 5), torch.zeros(2, H), torch.zeros(2, 3 * H)
    w_ih, w_hh = torch.randn(4 * H, 5), torch.randn(4 * H, H // heads)
    ops = torch.ops.fusedrnn_cuda_emulation
    with pytest.raises(RuntimeError, match="the CUDA kernels have no slstm cell"):
        ops.forward("slstm", "slstm", x, h0, c0, w_ih, w_hh, None, None, None, None, None, False)
    with pytest.raises(RuntimeError, match="the CUDA kernels have no slstm cell"):
        ops.forward_strategy("slstm", "slstm", x, h0, w_hh, None, 3)
    assert ("slstm", "slstm") not in backends.declared_cells("cuda")


def test_without_the_variable_the_backend_wants_a_gpu(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "0")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda backend is the real one")
    why = backends.unavailable_reason("cuda")
    assert why is not None and "FUSEDRNN_CUDA_EMULATE=1" in why


# ----------------------------------------------------------------------------
# NaN and inf through the CUDA kernels (every backend propagates them as torch.nn: docs/design.md section 8)
# ----------------------------------------------------------------------------

NONFINITE_PARAMS = [
    pytest.param(variant, place, value, strategy, id=f"{variant}-{place}-{value}-{strategy}")
    for variant in nc.variants("cuda")
    for place in nc.places(variant)
    for value in nc.VALUES
    for strategy in strategies(variant)
]


@pytest.mark.parametrize("variant, place, value, strategy", NONFINITE_PARAMS, indirect=["strategy"])
def test_special_values_propagate_like_torch(variant, place, value, strategy):
    """tests/nonfinite_cases.py's problems (one NaN or +-inf in one input, state or weight) on the
    emulated kernels, float32: NaN and inf exactly where torch.nn has them, finite values within 1e-5."""
    problem = nc.with_value(ft.make_problem(nc.case(variant), torch.float32), place, nc.VALUES[value])
    nc.assert_agree(nc.run(problem, "cuda", torch.float32), nc.oracle(problem), torch.float32)
