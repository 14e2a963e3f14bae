"""The fused C++ CPU backend (csrc/cpu) against the float64 reference and torch.nn.

Every strategy of the per-step product is tested wherever it applies:
``gemm`` (MKL per step; every cell and dtype), ``fused`` (the packed,
cache-resident micro-kernel with the gate math on its tile; float32/bfloat16,
every cell) and ``folded`` (fused, with the
input projection inside the per-step product; LSTM and RNN).  ``auto`` picks
among them by size, so all are what users get.

Oracles and tolerances are those of :mod:`fusedrnn.testing` (docs/design.md
section 8): float64 1e-10, float32 1e-5 (max-abs error over max magnitude),
bfloat16 at most 2x the error of the reference backend run in bfloat16.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn import backends, functional, reference
from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellSpec

REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
_WHY = backends.unavailable_reason("cpu")
if _WHY is not None and not REQUIRED:
    pytest.skip(f"the fused CPU kernels are not built in this checkout: {_WHY}", allow_module_level=True)

CPU = backends.get("cpu")
FUSED_VARIANTS = ("lstm", "lstm-peephole", "lstm-proj", "lstm-peephole-proj", "gru", "gru-reset-before", "rnn-tanh",
                  "rnn-relu")
STRATEGIES = ("gemm", "fused", "folded")
FOLDED_VARIANTS = ("lstm", "lstm-peephole", "lstm-proj", "lstm-peephole-proj", "rnn-tanh", "rnn-relu")


@pytest.fixture(scope="module")
def checker():
    """One Checker for the module: oracle runs are cached and shared by both strategies."""
    return ft.Checker("cpu")


def _applies(strategy: str, variant: str, dtype: torch.dtype) -> bool:
    """Whether `strategy` runs this variant itself (a forced one falls back otherwise)."""
    if strategy == "gemm":
        return True
    variants = FOLDED_VARIANTS if strategy == "folded" else FUSED_VARIANTS
    return variant in variants and dtype != torch.float64


# Odd sizes (H=37, I=3, B=5), a single step (the cells), every layout option;
# plus a batch of 29 (micro-kernel row blocks 12+12+5) and H=70 (five unit
# blocks, the last one partial) for the two extreme layouts, and H=60 (four
# blocks with AVX-512: the fused kernels' pairs of unit blocks then end in a
# partial block); B=65, H=257 puts more than 16384 elements in a step, so the
# per-step GEMM strategy splits its pointwise pass over threads.
KERNELS = ft.kernel_variants("cpu")  # the cells the cpu backend has kernels for (IndRNN's included)
GRID = (
    ft.cases(KERNELS, shapes=[(7, 5, 3, 37)])
    + ft.cases(KERNELS, shapes=[(1, 5, 3, 37)], options=["padded", "packed-reverse"])
    + ft.cases(KERNELS, shapes=[(3, 29, 5, 70)], options=["padded", "packed-reverse"])
    + ft.cases(KERNELS, shapes=[(4, 7, 3, 60)], options=["padded", "packed-reverse"])
    + ft.cases(KERNELS, shapes=[(3, 65, 5, 257)], options=["padded"])
)
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
PARAMS = [
    pytest.param(case, dtype, strat, id=f"{case.id}-{ft.dtype_name(dtype)}-{strat}")
    for case in GRID
    for dtype in DTYPES
    for strat in STRATEGIES
    if _applies(strat, case.variant, dtype)
]


@pytest.mark.parametrize("case, dtype, strategy", PARAMS, indirect=["strategy"])
def test_matches_reference_and_torch_nn(checker, case, dtype, strategy):
    """Outputs, final states and the gradients of every input, against both oracles."""
    outcome = checker.check("cpu", case, dtype)
    assert outcome.skipped is None, outcome.skipped
    assert outcome.passed, str(outcome)


# ----------------------------------------------------------------------------
# Direct op calls: every element written (NaN-poisoned buffers), workspace layout
# ----------------------------------------------------------------------------


def _problem(cell: CellSpec, T=7, B=5, I=3, H=37, packed=True, peephole=False, proj=0, dtype=torch.float32,
             seed=None):
    """Random inputs of one layer-direction from fusedrnn.testing's one generator: (x, h0, c0, weights,
    batch_sizes); packed rows come from unsorted lengths; another ``seed`` gives other values."""
    case = ft.Case(ft.variant_of(cell, peephole, bool(proj)), (T, B, I, H), "packed" if packed else "padded",
                   projection=proj or None)
    p = ft.layer_case(case, dtype, seed=seed)
    return p.x, p.h0, p.c0, p.weights, p.batch_sizes


def _double(t):
    return None if t is None else t.double()


def _extra(w):
    """The kernel ops' last argument, ``w_extra``, for a cell that has one (the layer-normalised cells)."""
    return {} if w.w_extra is None else {"w_extra": w.w_extra}


DIRECT = [
    pytest.param(CellSpec(*spec), extra, packed, reverse, strat,
                 id=f"{name}-{'packed' if packed else 'padded'}-{'reverse' if reverse else 'forward'}-{strat}")
    for name, spec, extra in (
        ("lstm-peephole", ("lstm", "lstm"), dict(peephole=True)),
        ("lstm-proj", ("lstm", "lstm"), dict(proj=11)),
        ("gru", ("gru", "reset_after"), {}),
        ("gru-reset-before", ("gru", "reset_before"), {}),
        ("rnn-relu", ("rnn", "relu"), {}),
        ("indrnn-relu", ("indrnn", "relu"), {}),
        ("indrnn-tanh", ("indrnn", "tanh"), {}),
        ("layer-norm-lstm", ("layer_norm_lstm", "layer_norm_lstm"), {}),
        ("layer-norm-gru", ("layer_norm_gru", "layer_norm_gru"), {}),
    )
    for packed, reverse in ((False, False), (True, True))
    for strat in STRATEGIES
    if _applies(strat, name, torch.float32)
]


@pytest.mark.parametrize("cell, extra, packed, reverse, strat", DIRECT)
def test_poisoned_buffers_are_fully_written(cell, extra, packed, reverse, strat):
    """With every output and scratch buffer NaN-filled first, results (workspace included) match the reference."""
    x, h0, c0, w, bs = _problem(cell, packed=packed, **extra)
    ops = torch.ops.fusedrnn_C  # the kernel ops take six weights, w_ih .. w_proj, then w_extra by name, last
    out, h_n, c_n, ws = ops.forward(cell.family, cell.mode, x, h0, c0, *w[:6], bs, reverse, strat, True, **_extra(w))
    ref = reference.sequence_forward(cell, x.double(), h0.double(), _double(c0), LayerWeights(*map(_double, w)),
                                     bs, reverse)
    for name, got, want in (("out", out, ref.out), ("h_n", h_n, ref.h_n), ("workspace", ws, ref.workspace)):
        ft_assert(got, want, torch.float32, name)
    if cell.has_cell_state:
        ft_assert(c_n, ref.c_n, torch.float32, "c_n")
    else:
        assert c_n.numel() == 0
    g_out, g_h = torch.randn_like(ref.out), torch.randn_like(ref.h_n)
    g_c = torch.randn_like(ref.c_n) if cell.has_cell_state else None
    want = reference.sequence_backward(cell, g_out, g_h, g_c, x.double(), h0.double(), _double(c0),
                                       LayerWeights(*map(_double, w)), bs, reverse, ref.out, ref.workspace)
    got = ops.backward(cell.family, cell.mode, g_out.float(), g_h.float(), None if g_c is None else g_c.float(),
                       x, h0, c0, *w[:6], bs, reverse, out, ws, strat, True, **_extra(w))
    names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_peep", "dw_proj", "dw_extra")
    assert len(got) == (10 if cell.extra_blocks else 9)
    for name, g, e in zip(names, got, (want.dx, want.dh0, want.dc0, *want.dweights)):
        if e is None:
            assert g.numel() == 0, name
        else:
            ft_assert(g, e, torch.float32, name)


@pytest.mark.parametrize("cell, extra, packed, reverse, strat", DIRECT)
def test_inference_keeps_no_workspace(cell, extra, packed, reverse, strat):
    """for_backward=False (what a no_grad forward asks for): same outputs, poisoned scratch fully
    rewritten every step, and an empty workspace."""
    x, h0, c0, w, bs = _problem(cell, packed=packed, **extra)
    out, h_n, c_n, ws = torch.ops.fusedrnn_C.forward(cell.family, cell.mode, x, h0, c0, *w[:6], bs, reverse, strat,
                                                     True, for_backward=False, **_extra(w))
    ref = reference.sequence_forward(cell, x.double(), h0.double(), _double(c0), LayerWeights(*map(_double, w)),
                                     bs, reverse)
    assert ws.numel() == 0
    for name, got, want in (("out", out, ref.out), ("h_n", h_n, ref.h_n)):
        ft_assert(got, want, torch.float32, name)
    if cell.has_cell_state:
        ft_assert(c_n, ref.c_n, torch.float32, "c_n")


@pytest.mark.parametrize("cell, extra, packed, reverse, strat", DIRECT)
def test_outputs_share_no_memory_with_inputs(cell, extra, packed, reverse, strat):
    """The cpu backend's contract ``fresh_outputs`` (fusedrnn/backends/cpu.py), which lets the callers skip
    their own alias check: no output of its forward shares storage with an input, a padded sequence without
    steps (h_n is then h0's values) and of one step included, for training (workspace kept) and inference."""
    assert CPU.fresh_outputs
    x_all, h0, c0, w, bs = _problem(cell, packed=packed, **extra)
    # packed rows as drawn; padded: also no step (the kernels' early exit) and one step
    for x in ([x_all] if packed else [x_all, x_all[:0], x_all[:1]]):
        inputs = [t for t in (x, h0, c0, *w, bs) if t is not None and t.numel() > 0]
        for for_backward in (True, False):
            res = CPU.forward(cell, x, h0, c0, w, bs, reverse, for_backward=for_backward)
            for name, t in zip(("out", "h_n", "c_n", "workspace"), res):
                if t is not None and t.numel() > 0:
                    storage = t.untyped_storage().data_ptr()
                    assert all(storage != i.untyped_storage().data_ptr() for i in inputs), (name, len(x))


def ft_assert(actual, expected, dtype, name):
    _, rel = ft.error(actual, expected)
    assert rel <= ft.tolerance(dtype), f"{name}: relative error {rel:.2e} > {ft.tolerance(dtype):.0e}"


# ----------------------------------------------------------------------------
# Gradcheck, double backward, saturation
# ----------------------------------------------------------------------------


GRADCHECK = [
    pytest.param(CellSpec("lstm", "lstm"), dict(peephole=True, proj=2), id="lstm-peephole-proj"),
    pytest.param(CellSpec("gru", "reset_after"), {}, id="gru"),
    pytest.param(CellSpec("gru", "reset_before"), {}, id="gru-reset-before"),
    pytest.param(CellSpec("rnn", "tanh"), {}, id="rnn-tanh"),
    pytest.param(CellSpec("indrnn", "relu"), {}, id="indrnn-relu"),
    pytest.param(CellSpec("indrnn", "tanh"), {}, id="indrnn-tanh"),
    pytest.param(CellSpec("layer_norm_lstm", "layer_norm_lstm"), {}, id="layer-norm-lstm"),
    pytest.param(CellSpec("layer_norm_gru", "layer_norm_gru"), {}, id="layer-norm-gru"),
]


def _leaves(x, h0, c0, w):
    return [t.detach().requires_grad_() if t is not None else None for t in (x, h0, c0, *w)]


@pytest.mark.parametrize("cell, extra", GRADCHECK)
def test_float64_gradcheck_through_ops(cell, extra):
    x, h0, c0, w, bs = _problem(cell, T=3, B=3, I=2, H=3, packed=True, dtype=torch.float64, **extra)
    leaves = _leaves(x, h0, c0, w)
    present = [t for t in leaves if t is not None]

    def fn(*args):
        it = iter(args)
        full = [next(it) if t is not None else None for t in leaves]
        res = functional.layer(cell, full[0], full[1], full[2], LayerWeights(*full[3:]), bs, True, backend="cpu")
        return (res.out, res.h_n) + ((res.c_n,) if res.c_n is not None else ())

    assert torch.autograd.gradcheck(fn, present, eps=1e-6, atol=1e-7)


def test_double_backward_with_cpu_backend_forced():
    cell = CellSpec("lstm", "lstm")
    x, h0, c0, w, _ = _problem(cell, T=2, B=2, I=2, H=2, packed=False, dtype=torch.float64)
    leaves = _leaves(x, h0, c0, w[:4])

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        res = functional.layer(cell, x, h0, c0, LayerWeights(w_ih, w_hh, b_ih, b_hh), backend="cpu")
        return res.out, res.h_n, res.c_n

    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES, indirect=True)
@pytest.mark.parametrize("cell", [CellSpec(f, m) for f, m in
                                  (("lstm", "lstm"), ("gru", "reset_after"), ("gru", "reset_before"),
                                   ("rnn", "tanh"), ("rnn", "relu"))], ids=str)
def test_saturated_preactivations_stay_finite(cell, strategy):
    """Pre-activations of about +-100 give finite outputs and gradients (no inf/inf, no exp overflow)."""
    x, h0, c0, w, bs = _problem(cell, T=4, B=3, I=3, H=20, packed=True)
    x = torch.sign(x) * 100.0  # with w_ih entries of a unit or so, |pre-activation| >> 100 for many units
    w = LayerWeights(torch.sign(w.w_ih) * 40.0, *w[1:])
    leaves = _leaves(x, h0, c0, w)
    res = functional.layer(cell, leaves[0], leaves[1], leaves[2], LayerWeights(*leaves[3:]), bs, False, backend="cpu")
    assert float((x @ w.w_ih.t()).abs().max()) >= 100.0
    loss = res.out.sum() + res.h_n.sum() + (res.c_n.sum() if res.c_n is not None else 0)
    if cell.mode == "relu":  # relu is unbounded by design: finite, not bounded
        loss = loss * 1e-6
    loss.backward()
    for t in (res.out, res.h_n, *[p.grad for p in leaves if p is not None]):
        assert torch.isfinite(t).all()


# ----------------------------------------------------------------------------
# Threads, memory, selection
# ----------------------------------------------------------------------------


def _forward_backward(cell, x, h0, c0, w, bs):
    leaves = _leaves(x, h0, c0, w)
    res = functional.layer(cell, leaves[0], leaves[1], leaves[2], LayerWeights(*leaves[3:]), bs, False, backend="cpu")
    (res.out.square().sum() + res.h_n.sum()).backward()
    return [res.out.detach(), res.h_n.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("strategy", STRATEGIES, indirect=True)
def test_concurrent_calls_match_serial_calls(strategy):
    """The same call from 4 Python threads at once gives bit-identical results to serial calls."""
    cell = CellSpec("lstm", "lstm")
    problem = _problem(cell, T=20, B=8, I=16, H=64, packed=True)
    expected = _forward_backward(cell, *problem)
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = _forward_backward(cell, *problem)
        except Exception as exc:  # reported below: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got in results:
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["fused", "folded"], indirect=True)
@pytest.mark.parametrize("cell", [CellSpec("lstm", "lstm"), CellSpec("gru", "reset_after"),
                                  CellSpec("gru", "reset_before"), CellSpec("rnn", "tanh")], ids=str)
def test_packed_weights_follow_in_place_updates(cell, strategy):
    """The packed weights (W_hh or, for GRU reset_before, views of its gate rows, and W_ih when folded;
    packed in every call, csrc/cpu/recurrent_product.h) follow optimizer-style in-place updates, two modules
    used in turn, and weights created under inference_mode (which have no version counter).  Writes that
    bypass the version counter: tests/test_weight_writes.py."""
    def check(w, x, h0, c0, bs):
        got = functional.layer(cell, x, h0, c0, w, bs, False, backend="cpu")
        want = reference.sequence_forward(cell, x.double(), h0.double(), _double(c0), LayerWeights(*map(_double, w)),
                                          bs, False)
        ft_assert(got.out, want.out, torch.float32, "out")

    x, h0, c0, w, bs = _problem(cell, T=6, B=4, I=5, H=40, packed=True)
    _, _, _, other, _ = _problem(cell, T=6, B=4, I=5, H=40, packed=True, seed=1)
    for _ in range(2):
        check(w, x, h0, c0, bs)
        check(other, x, h0, c0, bs)
    with torch.no_grad():
        w.w_hh.mul_(-0.5)  # same storage and shape, new version
    check(w, x, h0, c0, bs)
    with torch.no_grad():
        w.w_ih.mul_(-0.5)
    check(w, x, h0, c0, bs)
    with torch.inference_mode():
        w_inf = LayerWeights(*(None if t is None else t.clone() for t in w))
        check(w_inf, x, h0, c0, bs)
        w_inf.w_hh.mul_(-1.0)  # no version counter: must be repacked anyway
        check(w_inf, x, h0, c0, bs)


@pytest.mark.parametrize("x_grad, w_grad", [(False, True), (True, False)], ids=["data-input", "frozen-weights"])
@pytest.mark.parametrize("cell", [CellSpec("lstm", "lstm"), CellSpec("gru", "reset_before")], ids=str)
def test_gradients_not_asked_for_are_skipped(cell, x_grad, w_grad):
    """A first layer fed data (x without grad) or frozen weights: the backward skips those products and
    the gradients that are asked for still match the float64 reference."""
    x, h0, c0, w, bs = _problem(cell, T=6, B=4, I=5, H=21, packed=True)
    xs = x.clone().requires_grad_(x_grad)
    ws = LayerWeights(*(None if t is None else t.clone().requires_grad_(w_grad) for t in w))
    h0s = h0.clone().requires_grad_()
    res = functional.layer(cell, xs, h0s, c0, ws, bs, False, backend="cpu")
    g = torch.randn_like(res.out)
    (res.out * g).sum().backward()
    xd = x.double().requires_grad_(x_grad)
    wd = LayerWeights(*(None if t is None else t.double().requires_grad_(w_grad) for t in w))
    h0d = h0.double().requires_grad_()
    ref = reference.sequence_forward(cell, xd, h0d, _double(c0), wd, bs, False)
    (ref.out * g.double()).sum().backward()
    ft_assert(h0s.grad, h0d.grad, torch.float32, "dh0")
    if x_grad:
        ft_assert(xs.grad, xd.grad, torch.float32, "dx")
    for name, got, want in zip(LayerWeights._fields, ws, wd):
        if got is not None and w_grad:
            ft_assert(got.grad, want.grad, torch.float32, name)
        elif got is not None:
            assert got.grad is None, name


def test_aten_fallback_of_the_large_products():
    """FUSEDRNN_CPU_LINEAR=aten (what runs where torch has no oneDNN) gives the same results."""
    code = (
        "import torch, fusedrnn\n"
        "from fusedrnn import backends, functional, reference\n"
        "from fusedrnn.backends.base import LayerWeights\n"
        "from fusedrnn.cells import CellSpec\n"
        "assert backends.unavailable_reason('cpu') is None\n"
        "assert 'linear=aten' in torch.ops.fusedrnn_C.describe(), torch.ops.fusedrnn_C.describe()\n"
        "cell = CellSpec('lstm', 'lstm')\n"
        "w = LayerWeights(torch.randn(48, 7), torch.randn(48, 12), torch.randn(48), torch.randn(48))\n"
        "x = torch.randn(5, 3, 7, requires_grad=True)\n"
        "out = functional.layer(cell, x, None, None, w, backend='cpu').out\n"
        "out.square().sum().backward()\n"
        "xd = x.detach().double().requires_grad_()\n"
        "ref = reference.sequence_forward(cell, xd, torch.zeros(3, 12).double(), torch.zeros(3, 12).double(),\n"
        "                                 LayerWeights(*(None if t is None else t.double() for t in w)), None, False).out\n"
        "ref.square().sum().backward()\n"
        "assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()\n"
        "assert (x.grad.double() - xd.grad).abs().max() < 1e-4 * xd.grad.abs().max()\n"
    )
    env = dict(os.environ, FUSEDRNN_CPU_LINEAR="aten")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_narrower_vector_kernels(isa):
    """FUSEDRNN_CPU_ISA caps the vector width: the AVX2 and SSE2 builds of the micro-kernel and the
    pointwise passes (what a CPU without AVX-512 runs; other panel widths and register blocks) against
    the float64 reference, every strategy, odd sizes, packed reverse input; and the single-step kernels
    (row_product.cpp's dot tiles and their lane reductions) of each cell against torch.nn's in float64,
    at batches of one row, a partial tile and whole tiles."""
    code = (
        "import torch, fusedrnn.testing as ft\n"
        "from fusedrnn import backends\n"
        "assert backends.unavailable_reason('cpu') is None\n"
        "order = ['sse2', 'avx2', 'avx512']\n"
        "info = torch.ops.fusedrnn_C.describe()\n"
        "used = info.split('isa=')[1].split()[0]\n"
        f"assert order.index(used) <= order.index('{isa}'), info\n"
        "cpu = backends.get('cpu')\n"
        "for strategy in ('gemm', 'fused', 'folded'):\n"
        "    cpu.strategy = strategy\n"
        "    ft.assert_close_to_reference('cpu', cells=['lstm', 'lstm-peephole-proj', 'gru', 'gru-reset-before', 'rnn-tanh'],\n"
        "                                 shapes=[(4, 7, 3, 37), (3, 5, 2, 20)],\n"
        "                                 options=['padded', 'packed-reverse'], dtypes=['float32'], modules=False)\n"
        "import fusedrnn\n"
        "torch.manual_seed(0)\n"
        "for name in ('LSTMCell', 'GRUCell', 'RNNCell'):\n"
        "    for B in (1, 5, 16):\n"
        "        ours = getattr(fusedrnn, name)(37, 41)\n"
        "        theirs = getattr(torch.nn, name)(37, 41).double()\n"
        "        theirs.load_state_dict(ours.state_dict())\n"
        "        x = torch.randn(B, 37)\n"
        "        with torch.no_grad():\n"
        "            a, b = ours(x), theirs(x.double())\n"
        "        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):\n"
        "            torch.testing.assert_close(u.double(), v, rtol=1e-5, atol=1e-6)\n"
    )
    env = dict(os.environ, FUSEDRNN_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux) to read RSS")
def test_repeated_calls_do_not_grow_resident_memory():
    cell = CellSpec("lstm", "lstm")
    problem = _problem(cell, T=50, B=16, I=16, H=64, packed=False)  # ~1 MB of workspace per call
    for _ in range(20):  # warm-up: allocator caches, packed panels, thread pool
        _forward_backward(cell, *problem)
    before = _resident_bytes()
    for _ in range(200):
        _forward_backward(cell, *problem)
    grown = _resident_bytes() - before
    assert grown < 32 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 200 calls"


def test_kernel_info_first_thing_in_a_fresh_process():
    """kernel_info() before any op call (nothing has imported fusedrnn._C yet) loads the extension itself."""
    code = "import fusedrnn.backends.cpu as cpu\nprint(cpu.kernel_info())\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "isa=" in done.stdout and "threads=" in done.stdout, done.stdout


def test_auto_picks_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    cell = CellSpec("gru", "reset_after")
    x, h0, c0, w, _ = _problem(cell, packed=False)
    assert backends.resolve("auto", cell, x, w).name == "cpu"
    assert "avx" in torch.ops.fusedrnn_C.describe() or "sse2" in torch.ops.fusedrnn_C.describe()


# ----------------------------------------------------------------------------
# Bad calls: a RuntimeError naming the argument, never a crash
# ----------------------------------------------------------------------------


def _good_call():
    cell = CellSpec("lstm", "lstm")
    x, h0, c0, w, bs = _problem(cell, packed=True)
    return dict(family="lstm", mode="lstm", x=x, h0=h0, c0=c0, w_ih=w.w_ih, w_hh=w.w_hh, b_ih=w.b_ih, b_hh=w.b_hh,
                w_peep=None, w_proj=None, batch_sizes=bs, reverse=False)


BAD_CALLS = {
    "family": (dict(family="lstmx"), "family"),
    "mode": (dict(mode="reset_after"), "mode"),
    "x-dtype": (lambda a: dict(x=a["x"].double()), "w_ih has dtype"),
    "x-int": (lambda a: dict(x=a["x"].long()), "x must be float32"),
    "x-noncontiguous": (lambda a: dict(x=a["x"].t().contiguous().t()), "x must be contiguous"),
    "w_hh-shape": (lambda a: dict(w_hh=a["w_hh"][:, :-1].contiguous()), "w_hh must have shape"),
    "b_ih-shape": (lambda a: dict(b_ih=a["b_ih"][:-1]), "b_ih must have shape"),
    "h0-shape": (lambda a: dict(h0=a["h0"][:, :-1].contiguous()), "h0 must have shape"),
    "c0-missing": (dict(c0=None), "c0 is required"),
    "batch_sizes-increasing": (lambda a: dict(batch_sizes=a["batch_sizes"].flip(0)), "batch_sizes"),
    "batch_sizes-sum": (lambda a: dict(x=a["x"][:-1]), "batch_sizes sum"),
    "batch_sizes-dtype": (lambda a: dict(batch_sizes=a["batch_sizes"].int()), "batch_sizes must be"),
    "peephole-on-rnn": (lambda a: dict(family="rnn", mode="tanh", c0=None, w_ih=a["w_ih"][:37], w_hh=a["w_hh"][:37],
                                       b_ih=a["b_ih"][:37], b_hh=a["b_hh"][:37], w_peep=torch.zeros(3 * 37)),
                        "w_peep and w_proj exist only"),
}


@pytest.mark.parametrize("change, message", BAD_CALLS.values(), ids=list(BAD_CALLS))
def test_bad_calls_raise_runtime_error(change, message):
    args = _good_call()
    args.update(change(args) if callable(change) else change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedrnn_C.forward(*args.values())


def test_bad_backward_calls_raise_runtime_error():
    args = _good_call()
    out, h_n, c_n, ws = torch.ops.fusedrnn_C.forward(*args.values())
    rest = list(args.values())[2:]
    with pytest.raises(RuntimeError, match="workspace must have shape"):
        torch.ops.fusedrnn_C.backward("lstm", "lstm", out, h_n, c_n, *rest, out, ws[:, :-1].contiguous())
    with pytest.raises(RuntimeError, match="grad_cn is required"):
        torch.ops.fusedrnn_C.backward("lstm", "lstm", out, h_n, None, *rest, out, ws)
    with pytest.raises(RuntimeError, match="strategy must be"):
        torch.ops.fusedrnn_C.backward("lstm", "lstm", out, h_n, c_n, *rest, out, ws, "fast")


def test_strategy_query_names_what_auto_runs():
    """forward_strategy / backward_strategy (the schema every device shares, csrc/include/fusedrnn/op_schema.h):
    the strategy "auto" runs, with the reason where it is the per-step GEMM; checked against the run itself
    by forcing that strategy and comparing the results bitwise."""
    cell = CellSpec("lstm", "lstm")
    g = torch.Generator().manual_seed(0)
    x, h0, c0 = torch.randn(6, 4, 5, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    w = LayerWeights(torch.randn(32, 5, generator=g), torch.randn(32, 8, generator=g), None, None, None, None)
    assert CPU.chosen_forward_strategy(cell, x, h0, w, 6) in ("fused", "folded")
    assert CPU.chosen_backward_strategy(cell, x, h0, w, 6) == "fused"
    assert CPU.chosen_forward_strategy(cell, x, h0, w, 1) == "folded"  # a cell step with small weights
    big = LayerWeights(torch.empty(2048, 512), torch.empty(2048, 512), None, None, None, None)
    assert CPU.chosen_forward_strategy(cell, torch.empty(1, 4, 512), torch.empty(4, 512), big, 1).startswith(
        "gemm: a single step with large weights")
    assert CPU.chosen_forward_strategy(CellSpec("gru", "reset_after"), x, h0, LayerWeights(
        torch.randn(24, 5), torch.randn(24, 8), None, None, None, None), 1) == "fused"
    assert CPU.chosen_forward_strategy(cell, x.double(), h0.double(), w, 6).startswith("gemm: ")
    chosen = CPU.chosen_forward_strategy(cell, x, h0, w, 6)
    auto = torch.ops.fusedrnn_C.forward("lstm", "lstm", x, h0, c0, *w[:6], None, False, "auto")
    forced = torch.ops.fusedrnn_C.forward("lstm", "lstm", x, h0, c0, *w[:6], None, False, chosen)
    for a, b in zip(auto, forced):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="w_hh must be"):
        torch.ops.fusedrnn_C.forward_strategy("lstm", "lstm", x, h0, torch.zeros(30, 8), None, 6)


# ----------------------------------------------------------------------------
# IndRNN: the element-wise recurrence (csrc/cpu/diagonal_recurrence.h)
# ----------------------------------------------------------------------------

INDRNN = [CellSpec("indrnn", "relu"), CellSpec("indrnn", "tanh")]


def _forward_and_backward(cell, x, h0, w, bs, reverse, strategy):
    ops = torch.ops.fusedrnn_C
    out, h_n, c_n, ws = ops.forward(cell.family, cell.mode, x, h0, None, *w[:6], bs, reverse, strategy)
    g = torch.Generator().manual_seed(1)
    g_out, g_h = torch.randn(out.shape, generator=g), torch.randn(h_n.shape, generator=g)
    grads = ops.backward(cell.family, cell.mode, g_out, g_h, None, x, h0, None, *w[:6], bs, reverse, out, ws,
                         strategy)
    return [out, h_n, ws, *grads]


@pytest.mark.parametrize("cell", INDRNN, ids=str)
def test_indrnn_runs_one_kernel_whatever_the_strategy(cell):
    """Its hidden side has no product, so no strategy applies: every name runs the same kernel (the same
    bits), and the strategy query says so."""
    x, h0, _, w, bs = _problem(cell, T=6, B=5, I=4, H=37, packed=True)
    runs = {s: _forward_and_backward(cell, x, h0, w, bs, True, s) for s in ("auto", *STRATEGIES)}
    for s, results in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(results, runs["auto"])), s
    assert runs["auto"][2].shape == (x.shape[0], 0)  # no workspace: act' follows from out
    for dtype in (torch.float32, torch.float64):
        assert CPU.chosen_forward_strategy(cell, x.to(dtype), h0.to(dtype), w, 6) == "elementwise"
        assert CPU.chosen_backward_strategy(cell, x.to(dtype), h0.to(dtype), w, 6) == "elementwise"


def test_auto_runs_indrnn_on_the_cpu_backend_without_a_warning(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())  # the fallback warning is once per process
    cell = CellSpec("indrnn", "relu")
    x, h0, _, w, _ = _problem(cell, packed=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", cell, x, w).name == "cpu"
    # both GPU backends list it too (csrc/cuda/diagonal.cu, fusedrnn/triton_kernels/diagonal.py)
    for name in ("cuda", "triton"):
        assert (cell.family, cell.mode) in backends.declared_cells(name), name


def test_indrnn_cell_steps_run_the_sequence_kernels():
    """IndRNNCell: the cpu backend has no single-step op for it (step.h takes a matrix W_hh), so its steps
    run as sequences of one step, with and without grad, matching the reference backend; a direct call of the
    step ops with an IndRNN takes that path too."""
    import fusedrnn

    torch.manual_seed(0)
    cell = fusedrnn.IndRNNCell(5, 37)
    twin = fusedrnn.IndRNNCell(5, 37, backend="reference")
    twin.load_state_dict(cell.state_dict())
    x, h = torch.randn(4, 5), torch.randn(4, 37)
    assert CPU.step_op(CellSpec("indrnn", "relu"), x) is None
    with torch.no_grad():
        torch.testing.assert_close(cell(x, h), twin(x, h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cell(x, h), twin(x, h), rtol=1e-5, atol=1e-6)
    w = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    h_new, c_new, ws = torch.ops.fusedrnn_C.step_forward("indrnn", "relu", x, h, None, *w, None, True)
    torch.testing.assert_close(h_new, twin(x, h).detach(), rtol=1e-5, atol=1e-6)
    assert c_new.numel() == 0 and ws.numel() == 0


INDRNN_BAD_CALLS = {
    "w_hh-matrix": (lambda w: dict(w_hh=torch.zeros(37, 37)), "w_hh 1-D \\(indrnn cell\\)"),
    # w_hh's length is the hidden size: the other tensors are then the ones that disagree
    "w_hh-length": (lambda w: dict(w_hh=w.w_hh[:-1].contiguous()), "w_ih must have shape \\[36, 3\\]"),
    "w_hh-dtype": (lambda w: dict(w_hh=w.w_hh.double()), "w_hh has dtype"),
    "w_hh-noncontiguous": (lambda w: dict(w_hh=torch.zeros(74)[::2]), "w_hh must be contiguous"),
    "b_hh-shape": (lambda w: dict(b_hh=w.b_hh[:-1]), "b_hh must have shape"),
    "c0-given": (lambda w: dict(c0=torch.zeros(5, 37)), "c0 must be None"),
    "mode": (lambda w: dict(mode="sigmoid"), "mode of an indrnn cell"),
}


@pytest.mark.parametrize("change, message", INDRNN_BAD_CALLS.values(), ids=list(INDRNN_BAD_CALLS))
def test_bad_indrnn_calls_raise_runtime_error(change, message):
    cell = CellSpec("indrnn", "relu")
    x, h0, _, w, bs = _problem(cell)
    args = dict(family="indrnn", mode="relu", x=x, h0=h0, c0=None, w_ih=w.w_ih, w_hh=w.w_hh, b_ih=w.b_ih,
                b_hh=w.b_hh, w_peep=None, w_proj=None, batch_sizes=bs, reverse=False)
    args.update(change(w))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedrnn_C.forward(*args.values())
    if "w_hh" in message:
        with pytest.raises(RuntimeError, match="w_hh"):
            torch.ops.fusedrnn_C.forward_strategy("indrnn", "relu", x, h0, torch.zeros(37, 37), None, 6)


# ----------------------------------------------------------------------------
# The layer-normalised cells: whole rows per thread (csrc/cpu/layer_norm_recurrence.h)
# ----------------------------------------------------------------------------

LAYER_NORM = [CellSpec("layer_norm_lstm", "layer_norm_lstm"), CellSpec("layer_norm_gru", "layer_norm_gru")]


def _ln_forward_and_backward(cell, x, h0, c0, w, bs, reverse, strategy):
    ops = torch.ops.fusedrnn_C
    out, h_n, c_n, ws = ops.forward(cell.family, cell.mode, x, h0, c0, *w[:6], bs, reverse, strategy, w_extra=w.w_extra)
    g = torch.Generator().manual_seed(1)
    g_out, g_h = torch.randn(out.shape, generator=g), torch.randn(h_n.shape, generator=g)
    g_c = torch.randn(c_n.shape, generator=g) if c0 is not None else None
    grads = ops.backward(cell.family, cell.mode, g_out, g_h, g_c, x, h0, c0, *w[:6], bs, reverse, out, ws, strategy,
                         w_extra=w.w_extra)
    return [out, h_n, c_n, ws, *grads]


@pytest.mark.parametrize("cell", LAYER_NORM, ids=str)
def test_layer_norm_cells_run_one_kernel_whatever_the_strategy(cell):
    """A row's normalisation needs all of its units, which the fused strategies split over threads: every strategy
    name runs the same kernel (the same bits), the strategy query says so, and the backward returns a tenth
    gradient, that of w_extra."""
    x, h0, c0, w, bs = _problem(cell, T=6, B=5, I=4, H=37, packed=True)
    runs = {s: _ln_forward_and_backward(cell, x, h0, c0, w, bs, True, s) for s in ("auto", *STRATEGIES)}
    for s, results in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(results, runs["auto"])), s
    assert len(runs["auto"]) == 4 + 10 and runs["auto"][-1].shape == w.w_extra.shape
    for dtype in (torch.float32, torch.float64):
        for query in (CPU.chosen_forward_strategy, CPU.chosen_backward_strategy):
            assert query(cell, x.to(dtype), h0.to(dtype), w, 6).startswith("gemm: a layer-normalised cell")


def test_auto_runs_the_layer_norm_cells_on_the_cpu_backend_without_a_warning(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())  # the fallback warning is once per process
    import warnings

    for cell in LAYER_NORM:
        x, h0, _, w, _ = _problem(cell, packed=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.resolve("auto", cell, x, w).name == "cpu"
        # the triton backend lists them too (fusedrnn/triton_kernels/layer_norm.py), the cuda backend not
        assert (cell.family, cell.mode) in backends.declared_cells("triton")
        assert (cell.family, cell.mode) not in backends.declared_cells("cuda")


@pytest.mark.parametrize("module, spec", list(zip(["LayerNormLSTMCell", "LayerNormGRUCell"], LAYER_NORM)),
                         ids=["lstm", "gru"])
def test_layer_norm_cell_steps_run_the_sequence_kernels(module, spec):
    """The step ops take no w_extra: the cpu backend gives these cells no step op, so their steps run as
    sequences of one step, with and without grad, matching the reference backend; the step ops refuse them."""
    import fusedrnn

    torch.manual_seed(0)
    cls = getattr(fusedrnn, module)
    cell, twin = cls(5, 37), cls(5, 37, backend="reference")
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # gains and shift away from their initial ones and zeros
    twin.load_state_dict(cell.state_dict())
    x, h = torch.randn(4, 5), torch.randn(4, 37)
    state = (h, torch.randn(4, 37)) if module == "LayerNormLSTMCell" else h
    assert CPU.step_op(spec, x) is None
    with torch.no_grad():
        torch.testing.assert_close(cell(x, state), twin(x, state), rtol=1e-5, atol=1e-6)
    got, want = cell(x, state), twin(x, state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    loss = lambda out: sum(t.sum() for t in (out if isinstance(out, tuple) else (out,)))  # noqa: E731
    grads = torch.autograd.grad(loss(got), list(cell.parameters()))
    for g, p in zip(grads, torch.autograd.grad(loss(want), list(twin.parameters()))):
        torch.testing.assert_close(g, p, rtol=1e-5, atol=1e-5)
    w = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    c = state[1] if isinstance(state, tuple) else None
    with pytest.raises(RuntimeError, match="the step ops have no"):
        torch.ops.fusedrnn_C.step_forward(spec.family, spec.mode, x, h, c, *w, None, True)


LAYER_NORM_BAD_CALLS = {
    "w_extra-missing": (lambda w: dict(w_extra=None), "w_extra is required for a layer_norm_lstm cell"),
    "w_extra-length": (lambda w: dict(w_extra=w.w_extra[:-1].contiguous()), "w_extra must have shape \\[370\\]"),
    "w_extra-dtype": (lambda w: dict(w_extra=w.w_extra.double()), "w_extra has dtype"),
    "w_extra-noncontiguous": (lambda w: dict(w_extra=torch.ones(740)[::2]), "w_extra must be contiguous"),
    "c0-missing": (lambda w: dict(c0=None), "c0 is required"),
    "w_peep-given": (lambda w: dict(w_peep=torch.zeros(111)), "w_peep and w_proj exist only for lstm cells"),
    "mode": (lambda w: dict(mode="lstm"), "mode of a layer_norm_lstm cell"),
}


@pytest.mark.parametrize("change, message", LAYER_NORM_BAD_CALLS.values(), ids=list(LAYER_NORM_BAD_CALLS))
def test_bad_layer_norm_calls_raise_runtime_error(change, message):
    cell = LAYER_NORM[0]
    x, h0, c0, w, bs = _problem(cell)
    args = dict(family=cell.family, mode=cell.mode, x=x, h0=h0, c0=c0, w_ih=w.w_ih, w_hh=w.w_hh, b_ih=w.b_ih,
                b_hh=w.b_hh, w_peep=None, w_proj=None, batch_sizes=bs, reverse=False, w_extra=w.w_extra)
    args.update(change(w))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedrnn_C.forward(**args)


def test_w_extra_is_refused_for_a_cell_without_extra_weights():
    cell = CellSpec("lstm", "lstm")
    x, h0, c0, w, bs = _problem(cell)
    with pytest.raises(RuntimeError, match="w_extra must be None for a lstm cell"):
        torch.ops.fusedrnn_C.forward("lstm", "lstm", x, h0, c0, *w[:6], bs, False, w_extra=torch.ones(148))
