"""The ``cuda`` backend (csrc/cuda) against the float64 reference and torch.nn (cuDNN).

The kernel tests run on two targets (the ``device`` fixture): ``gpu`` (marked
``gpu``: a CUDA GPU and the extension built there with its CUDA kernels,
``TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation -e .``) and ``emu``,
the same kernels on CPU tensors through the CUDA emulation
(``FUSEDRNN_CUDA_EMULATE=1``, csrc/emulation; built where torch has no CUDA),
which runs in every ``make test``.  They call the ops ``forward`` / ``backward``
(``torch.ops.fusedrnn_C``, or ``torch.ops.fusedrnn_cuda_emulation`` in emulation) with ``poison=True``
(every output and scratch buffer filled with NaN first, so an element a kernel
forgets to write fails) and with each strategy (``per_step`` and
``persistent``, forward and backward alike: every cell has both).  Only the cuDNN comparison is
GPU-only; the long-sequence and benchmark-shape tests run shorter in emulation.

Tolerances (docs/design.md section 8): float32 against the float64 reference
``rtol = atol = 1e-5`` (1e-4 over 2048 steps); float16/bfloat16: the largest
error against the float64 reference at most twice that of the same
computation done by PyTorch in that dtype (the step equations of
tests/conftest.py, or cuDNN), the FlashAttention rule, plus one unit roundoff
of the dtype relative to the largest expected magnitude, as in
:mod:`fusedrnn.testing` (at these small sizes PyTorch's own error is sometimes
near zero by luck: seen in emulation, a persistent float16 T=1 case at 2.04x).

The tests at the end run anywhere: how the backend explains that it cannot run.
"""

from __future__ import annotations

import os
import types

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import _extension, backends, reference
from fusedrnn.backends.base import LayerWeights
from fusedrnn.backends.cuda import CudaBackend
from fusedrnn.cells import CellSpec

from conftest import gru_step, lstm_step, rnn_step
from layer_cases import LayerCase, case_id, make_case, option_grid
from test_cuda_emulation import emulation_expected

#: one intra-op thread: the tensors are tiny, and two spinning OpenMP threads on 2 cores cost 10-100x (conftest)
pytestmark = pytest.mark.usefixtures("single_thread")

LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

#: problem sizes: odd (nothing a multiple of a block: scalar kernels), aligned
#: (H a multiple of 16: the 16-byte vector path) and a single step
SIZES = {
    "odd": dict(T=7, B=5, I=3, H=37),
    "aligned": dict(T=5, B=4, I=8, H=64),
    "T1": dict(T=1, B=3, I=5, H=16),
}


def strategies(cell, options):
    """The forward strategies: every cell has a persistent kernel (csrc/cuda/README.md)."""
    return ["per_step", "persistent"]


# ----------------------------------------------------------------------------
# running the ops
# ----------------------------------------------------------------------------


def _ops():
    """The backend's ops: the real ones, or the emulation's (FUSEDRNN_CUDA_EMULATE, set by the device fixture)."""
    return CudaBackend().ops()


def on_device(case: LayerCase, dtype, device) -> LayerCase:
    """The case's tensors in ``dtype`` on ``device`` (batch_sizes stays on the CPU, as in PackedSequence)."""

    def move(t):
        return None if t is None else t.to(device=device, dtype=dtype).contiguous()

    return LayerCase(case.cell, move(case.x), move(case.h0), move(case.c0), LayerWeights(*map(move, case.weights)),
                     case.batch_sizes, case.reverse)


def in_float64(case: LayerCase) -> LayerCase:
    """The same (already rounded) values in float64 on the CPU: the reference's inputs."""

    def move(t):
        return None if t is None else t.detach().to(device="cpu", dtype=torch.float64)

    return LayerCase(case.cell, move(case.x), move(case.h0), move(case.c0), LayerWeights(*map(move, case.weights)),
                     case.batch_sizes, case.reverse)


def cuda_forward(case: LayerCase, strategy: str, poison: bool = True):
    return _ops().forward(case.cell.family, case.cell.mode, *case.inputs(), case.batch_sizes, case.reverse,
                          strategy, poison)


def cuda_backward(case: LayerCase, grads, out, workspace, strategy: str = "auto", poison: bool = True):
    g_out, g_hn, g_cn = grads
    return _ops().backward(case.cell.family, case.cell.mode, g_out, g_hn, g_cn, *case.inputs(),
                           case.batch_sizes, case.reverse, out, workspace, strategy, poison)


def random_grads(case: LayerCase, out):
    g_out = torch.randn_like(out)
    g_hn = torch.randn_like(case.h0)
    g_cn = torch.randn_like(case.c0) if case.c0 is not None else None
    return g_out, g_hn, g_cn


def reference_results(case64: LayerCase, grads64):
    fwd = reference.sequence_forward(case64.cell, case64.x, case64.h0, case64.c0, case64.weights,
                                     case64.batch_sizes, case64.reverse)
    bwd = reference.sequence_backward(case64.cell, *grads64, case64.x, case64.h0, case64.c0, case64.weights,
                                      case64.batch_sizes, case64.reverse, fwd.out, fwd.workspace)
    return fwd, bwd


def gradient_list(bwd):
    """(name, tensor) of every gradient the backward returns, in the ops' order."""
    names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_peep", "dw_proj")
    tensors = (bwd.dx, bwd.dh0, bwd.dc0, *bwd.dweights)
    return [(n, t) for n, t in zip(names, tensors) if t is not None]


# ----------------------------------------------------------------------------
# the same computation in a low precision dtype, by PyTorch: the baseline error
# ----------------------------------------------------------------------------


def same_dtype_forward(case: LayerCase):
    """out, h_n, c_n from the step equations of tests/conftest.py, every op in the case's dtype."""
    cell, w = case.cell, case.weights
    steps = reference.Steps(case.x, case.batch_sizes, case.reverse)
    rows = case.x if case.batch_sizes is not None else case.x.flatten(0, 1)
    p = dict(weight_ih=w.w_ih, weight_hh=w.w_hh, bias_ih=w.b_ih, bias_hh=w.b_hh, weight_ch=w.w_peep,
             weight_hr=w.w_proj)
    h, c = case.h0, case.c0
    outs = [None] * len(steps.sizes)
    for t in steps.order:
        n, xt = steps.sizes[t], rows[steps.span(t)]
        if cell.family == "lstm":
            h_new, c_new = lstm_step(xt, h[:n], c[:n], p)
            c = torch.cat([c_new, c[n:]])
        elif cell.family == "gru":
            h_new = gru_step(xt, h[:n], p, reset_after=cell.mode == "reset_after")
        else:
            h_new = rnn_step(xt, h[:n], p, nonlinearity=cell.mode)
        outs[t] = h_new
        h = torch.cat([h_new, h[n:]])
    out = torch.cat(outs).reshape(*case.x.shape[:-1], h.shape[-1])
    return out, h, c


def same_dtype_results(case: LayerCase, grads):
    """The baseline's forward outputs and gradients (autograd through same_dtype_forward)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in case.inputs()]
    x, h0, c0, *w = leaves
    base = LayerCase(case.cell, x, h0, c0, LayerWeights(*w), case.batch_sizes, case.reverse)
    out, h_n, c_n = same_dtype_forward(base)
    outputs = [out, h_n] + ([c_n] if c_n is not None else [])
    present = [t for t in leaves if t is not None]
    g = torch.autograd.grad(outputs, present, [t for t in grads if t is not None])
    return (out, h_n, c_n), g


def max_error(actual, expected64) -> float:
    return (actual.detach().double().cpu() - expected64).abs().max().item() if expected64.numel() else 0.0


def check_float32(name, actual, expected64, tol=1e-5):
    assert torch.isfinite(actual).all(), f"{name}: not finite (an element left unwritten?)"
    torch.testing.assert_close(actual.double().cpu(), expected64, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def check_low_precision(name, actual, baseline, expected64):
    assert torch.isfinite(actual).all(), f"{name}: not finite (an element left unwritten?)"
    ours, base = max_error(actual, expected64), max_error(baseline, expected64)
    slack = ft.UNIT_ROUNDOFF[actual.dtype] * (expected64.abs().max().item() if expected64.numel() else 0.0)
    assert ours <= 2 * base + slack, (
        f"{name}: max error {ours:.3g} against the float64 reference exceeds twice that of PyTorch "
        f"in {actual.dtype} ({base:.3g}) plus one unit roundoff ({slack:.3g})")


@pytest.fixture
def no_tf32():
    """float32 products in full float32 (cuBLAS and cuDNN), so float32 tolerances apply."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _require_cuda_backend():
    why = backends.unavailable_reason("cuda")
    if why is not None:
        if torch.cuda.is_available():  # a GPU but no kernels: a broken build, not missing hardware
            pytest.fail(f"a CUDA GPU is present but the cuda backend is unavailable: {why}")
        pytest.skip(why)


@pytest.fixture
def require_cuda_backend(monkeypatch):
    """The real cuda backend (GPU-only tests)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "0")
    _require_cuda_backend()


#: where the kernels run: "emu" (the CUDA emulation on CPU tensors) and "gpu"
TARGETS = [pytest.param("cpu", id="emu"), pytest.param("cuda", id="gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=TARGETS)
def device(request, monkeypatch):
    """The device of the kernels' tensors: "cuda" on a GPU, "cpu" through the CUDA emulation."""
    if request.param == "cuda":
        monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "0")
        _require_cuda_backend()
        return "cuda"
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "1")
    why = backends.unavailable_reason("cuda")
    if why is not None:
        if emulation_expected():
            pytest.fail(f"the CUDA emulation should have been built here but is unavailable: {why}")
        pytest.skip(why)
    return "cpu"


def emulated(device) -> bool:
    return device == "cpu"


def compare_with_reference(case, dtype, strategy, device, tol=1e-5):
    """Forward and backward of the cuda ops on ``case`` in ``dtype`` against the float64 reference."""
    gpu = on_device(case, dtype, device)
    out, h_n, c_n, ws = cuda_forward(gpu, strategy)
    grads = random_grads(gpu, out)
    res = cuda_backward(gpu, grads, out, ws, strategy)
    ref_fwd, ref_bwd = reference_results(in_float64(gpu), [None if g is None else g.double().cpu() for g in grads])
    forward = [("out", out, ref_fwd.out), ("h_n", h_n, ref_fwd.h_n)]
    if case.cell.has_cell_state:
        forward.append(("c_n", c_n, ref_fwd.c_n))
    ours = [g for g, t in zip(res, gpu.inputs()) if t is not None]  # the ops return empties for absent inputs
    backward = [(name, g, ref) for (name, ref), g in zip(gradient_list(ref_bwd), ours)]
    assert len(backward) == len(ours)
    if dtype == torch.float32:
        for name, actual, expected in forward + [("workspace", ws, ref_fwd.workspace)] + backward:
            check_float32(f"{strategy} {name}", actual, expected, tol)
        return
    (b_out, b_hn, b_cn), b_grads = same_dtype_results(gpu, grads)
    baselines = [b_out, b_hn] + ([b_cn] if case.cell.has_cell_state else []) + list(b_grads)
    assert torch.isfinite(ws).all(), "workspace: not finite (an element left unwritten?)"
    for (name, actual, expected), base in zip(forward + backward, baselines):
        check_low_precision(f"{strategy} {name}", actual, base, expected)


# ----------------------------------------------------------------------------
# every cell, option, dtype and strategy against the reference
# ----------------------------------------------------------------------------

GRID = [
    pytest.param(cell, dict(options, **size), dtype, strategy,
                 id=f"{case_id(cell, options)}-{size_id}-{DTYPE_IDS[dtype]}-{strategy}")
    for cell, options in option_grid()
    for size_id, size in SIZES.items()
    for dtype in DTYPES
    for strategy in strategies(cell, options)
]


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cell,options,dtype,strategy", GRID)
def test_forward_and_backward_match_reference(cell, options, dtype, strategy, device, fixed_seed):
    case = make_case(cell, generator=torch.Generator().manual_seed(fixed_seed), **options)
    compare_with_reference(case, dtype, strategy, device)


LONG = [
    pytest.param(CellSpec(family, mode), packed, dtype, strategy,
                 id=f"{family}[{mode}]-{'packed-reverse' if packed else 'padded'}-{DTYPE_IDS[dtype]}-{strategy}")
    for family, mode in (("lstm", "lstm"), ("gru", "reset_after"), ("gru", "reset_before"))
    for packed in (False, True)
    for dtype in (torch.float32, torch.bfloat16)
    for strategy in strategies(CellSpec(family, mode), {})
]


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cell,packed,dtype,strategy", LONG)
def test_long_sequence_2048_steps(cell, packed, dtype, strategy, device, fixed_seed):
    """T=2048 (256 in emulation: the step loop is the same, the CPU slower): errors must not grow along the
    sequence (float32 tolerance 1e-4 for up to 2048 accumulated steps)."""
    case = make_case(cell, T=256 if emulated(device) else 2048, B=3, I=5, H=37, packed=packed, reverse=packed,
                     generator=torch.Generator().manual_seed(fixed_seed))
    compare_with_reference(case, dtype, strategy, device, tol=1e-4)


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("family,mode", [("lstm", "lstm"), ("gru", "reset_after")])
def test_benchmark_shape_both_strategies(family, mode, dtype, device, fixed_seed):
    """The benchmark's shape (B=16, H=768; T shortened to 64, to 2 in emulation): many blocks (48 to 96,
    all resident for grid.sync), tensor cores for 16-bit."""
    cell, backend = CellSpec(family, mode), CudaBackend()
    sizes = (cell, torch.empty(0, device=device, dtype=dtype), torch.empty(16, 768, device=device, dtype=dtype),
             LayerWeights(None, torch.empty(cell.gates * 768, 768, device=device, dtype=dtype)), 64)
    assert backend.chosen_forward_strategy(*sizes) == "persistent"
    assert backend.chosen_backward_strategy(*sizes) == "persistent"
    case = make_case(cell, T=2 if emulated(device) else 64, B=16, I=256, H=768,
                     generator=torch.Generator().manual_seed(fixed_seed))
    for strategy in ("per_step", "persistent"):
        compare_with_reference(case, dtype, strategy, device, tol=1e-4)


# ----------------------------------------------------------------------------
# torch.nn (cuDNN) on the same weights
# ----------------------------------------------------------------------------

NN_CELLS = [("lstm", "lstm", "LSTM", {}), ("gru", "reset_after", "GRU", {}),
            ("rnn", "tanh", "RNN", {"nonlinearity": "tanh"}), ("rnn", "relu", "RNN", {"nonlinearity": "relu"})]


def _cudnn_module(kind, kwargs, case, dtype):
    """A bidirectional torch.nn layer whose two directions both hold the case's weights."""
    I, H = case.x.shape[-1], case.h0.shape[-1]
    module = getattr(torch.nn, kind)(I, H, bidirectional=True, **kwargs).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        for suffix in ("", "_reverse"):
            for stem, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), case.weights[:4]):
                getattr(module, f"{stem}_l0{suffix}").copy_(w)
    return module


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32", "require_cuda_backend")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family,mode,kind,kwargs", NN_CELLS, ids=[f"{f}-{m}" for f, m, _, _ in NN_CELLS])
def test_matches_cudnn(family, mode, kind, kwargs, packed, dtype, fixed_seed):
    """Both directions of a cuDNN bidirectional layer against our forward and reverse calls."""
    cell = CellSpec(family, mode)
    case = on_device(make_case(cell, T=9, B=5, I=3, H=37, packed=packed,
                               generator=torch.Generator().manual_seed(fixed_seed)), dtype, "cuda")
    module = _cudnn_module(kind, kwargs, case, dtype)
    h0 = torch.stack([case.h0, case.h0])
    x = PackedSequence(case.x, case.batch_sizes) if packed else case.x
    with torch.no_grad():
        if family == "lstm":
            nn_out, (nn_h, nn_c) = module(x, (h0, torch.stack([case.c0, case.c0])))
        else:
            nn_out, nn_h = module(x, h0)
    nn_out = nn_out.data if packed else nn_out
    ref64 = in_float64(case)
    for direction, reverse in enumerate((False, True)):
        run = LayerCase(cell, case.x, case.h0, case.c0, case.weights, case.batch_sizes, reverse)
        ref = reference.sequence_forward(cell, ref64.x, ref64.h0, ref64.c0, ref64.weights, ref64.batch_sizes, reverse)
        pairs = [("out", nn_out[..., direction * 37:(direction + 1) * 37], ref.out), ("h_n", nn_h[direction], ref.h_n)]
        if family == "lstm":
            pairs.append(("c_n", nn_c[direction], ref.c_n))
        for strategy in strategies(cell, {}):
            ours = cuda_forward(run, strategy)
            for (name, theirs, expected), mine in zip(pairs, ours):
                label = f"{strategy} reverse={reverse} {name}"
                if dtype == torch.float32:
                    check_float32(label, mine, theirs.double().cpu())
                else:
                    check_low_precision(label, mine, theirs, expected)


@pytest.mark.usefixtures("no_tf32")
def test_module_matches_torch_nn_through_the_backend(device, fixed_seed):
    """fusedrnn.LSTM(backend='cuda'), two bidirectional layers, packed input: outputs and gradients."""
    torch_lstm = torch.nn.LSTM(3, 37, num_layers=2, bidirectional=True).to(device)
    ours = fusedrnn.LSTM(3, 37, num_layers=2, bidirectional=True, backend="cuda").to(device)
    ours.load_state_dict(torch_lstm.state_dict())
    lengths = [7, 2, 5, 1, 6]
    seqs = [torch.randn(n, 3, device=device) for n in lengths]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    results = []
    for module in (torch_lstm, ours):
        out, (h, c) = module(packed)
        loss = (out.data * torch.linspace(-1, 1, out.data.numel(), device=device).view_as(out.data)).sum() \
            + (h * 0.5).sum() + (c * 0.25).sum()
        grads = torch.autograd.grad(loss, list(module.parameters()))
        results.append([out.data, h, c, *grads])
    for theirs, mine in zip(*results):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# races, poisoning, the strategy rule, argument errors
# ----------------------------------------------------------------------------

REPEAT = [
    pytest.param(CellSpec(f, m), dtype, strategy, id=f"{f}-{m}-{DTYPE_IDS[dtype]}-{strategy}")
    for f, m in (("lstm", "lstm"), ("gru", "reset_after"), ("gru", "reset_before"), ("rnn", "tanh"))
    for dtype in (torch.float32, torch.bfloat16)
    for strategy in strategies(CellSpec(f, m), {})
]


@pytest.mark.parametrize("cell,dtype,strategy", REPEAT)
def test_repeated_runs_are_bitwise_identical(cell, dtype, strategy, device, monkeypatch, fixed_seed):
    """A result that changes between identical runs is a race (or an unwritten element).  In emulation
    the runs are deterministic, so each runs its CUDA threads in another order (forward, reverse,
    shuffled): a result that depends on the order is a race there."""
    size = dict(T=16, B=16, I=8, H=48) if emulated(device) else dict(T=50, B=16, I=32, H=128)  # several blocks
    case = on_device(make_case(cell, **size, packed=True, peephole=cell.family == "lstm",
                               generator=torch.Generator().manual_seed(fixed_seed)), dtype, device)
    runs = []
    for schedule in ("forward", "reverse", "shuffle:11"):
        monkeypatch.setenv("FUSEDRNN_EMU_SCHEDULE", schedule)
        out, h_n, c_n, ws = cuda_forward(case, strategy)
        grads = tuple(torch.linspace(-1, 1, t.numel(), device=device, dtype=dtype).view_as(t) if t is not None
                      else None for t in (out, h_n, c_n if cell.has_cell_state else None))
        runs.append([out, h_n, c_n, ws, *cuda_backward(case, grads, out, ws, strategy)])
    for again in runs[1:]:
        for first, second in zip(runs[0], again):
            assert torch.equal(first, second)


INFERENCE_CELLS = [pytest.param(CellSpec("lstm", "lstm"), {"proj": 4}, id="lstm-proj4"),
                   pytest.param(CellSpec("gru", "reset_before"), {}, id="gru-reset_before"),
                   pytest.param(CellSpec("gru", "reset_after"), {}, id="gru-reset_after")]


@pytest.mark.parametrize("strategy", ["per_step", "persistent"])
@pytest.mark.parametrize("cell,options", INFERENCE_CELLS)
def test_inference_keeps_no_workspace_and_gives_the_training_results(cell, options, strategy, device):
    """for_backward=False (a forward without grad): the steps share one [B, W] workspace and none is
    returned; out, h_n and c_n are bitwise those of a forward kept for the backward."""
    case = on_device(make_case(cell, T=6, B=5, I=3, H=37, packed=True, reverse=True, **options), torch.float32,
                     device)
    kept = cuda_forward(case, strategy)
    inference = _ops().forward(case.cell.family, case.cell.mode, *case.inputs(), case.batch_sizes, case.reverse,
                               strategy, True, False)
    assert inference[3].numel() == 0 and kept[3].numel() > 0
    for name, a, b in zip(("out", "h_n", "c_n"), kept[:3], inference[:3]):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("strategy", ["per_step", "persistent"])
def test_backward_skips_the_gradients_not_asked_for(strategy, device):
    """need_dx / need_dweights False: those gradients come back empty, the others unchanged."""
    case = on_device(make_case(CellSpec("lstm", "lstm"), T=5, B=4, I=3, H=9, peephole=True), torch.float32, device)
    out, h_n, c_n, ws = cuda_forward(case, strategy)
    grads = random_grads(case, out)

    def backward(need_dx, need_dweights):
        return _ops().backward(case.cell.family, case.cell.mode, *grads, *case.inputs(), case.batch_sizes,
                               case.reverse, out, ws, strategy, True, need_dx, need_dweights)

    every = backward(True, True)
    no_dx, no_dweights = backward(False, True), backward(True, False)
    assert no_dx[0].numel() == 0 and all(t.numel() == 0 for t in no_dweights[3:])
    for kept, all_of in ((no_dx[1:], every[1:]), (no_dweights[:3], every[:3])):
        for a, b in zip(kept, all_of):
            assert torch.equal(a, b)


def test_every_device_implements_one_schema(device):
    """The ops of csrc/include/fusedrnn/op_schema.h: the same schema whichever namespace holds them."""
    ops = _ops()
    assert fusedrnn._extension.load() is not None, fusedrnn._extension.load_error()  # torch.ops.fusedrnn_C
    for name in ("forward", "backward", "forward_strategy", "backward_strategy"):
        ours = str(getattr(ops, name).default._schema).split("::", 1)[1]
        cpu = str(getattr(torch.ops.fusedrnn_C, name).default._schema).split("::", 1)[1]
        assert ours == cpu, name


def test_auto_strategy_rule(device):
    """The rule of csrc/cuda/README.md on the device (the emulation's is an H100's: 132 SMs, 227 KB)."""
    backend = CudaBackend()
    x = torch.empty(0, device=device)

    def chosen(family, mode, B, H, steps, proj=0, dtype=torch.float32):
        cell = CellSpec(family, mode)
        hout = proj or H
        w = LayerWeights(None, torch.empty(cell.gates * H, hout, device=device, dtype=dtype), None, None, None,
                         torch.empty(proj, H, device=device, dtype=dtype) if proj else None)
        return backend.chosen_forward_strategy(cell, x.to(dtype), torch.empty(B, hout, device=device, dtype=dtype),
                                               w, steps)

    assert chosen("lstm", "lstm", 5, 37, 7) == "persistent"
    assert chosen("gru", "reset_after", 16, 768, 1024, dtype=torch.bfloat16) == "persistent"
    assert chosen("rnn", "relu", 5, 37, 7) == "persistent"
    assert chosen("lstm", "lstm", 5, 37, 1).startswith("per_step: a single step")
    assert chosen("lstm", "lstm", 5, 37, 7, proj=4) == "persistent"
    assert chosen("gru", "reset_before", 5, 37, 7) == "persistent"
    assert chosen("lstm", "lstm", 16, 768, 1024, proj=256, dtype=torch.bfloat16) == "persistent"
    # float32 W_hh rows of 4 gates x 8 units x 8192 inputs need 1 MiB of shared memory per block
    assert "shared memory" in chosen("lstm", "lstm", 4, 8192, 7)


def test_forced_persistent_where_impossible_raises(device):
    """float32 W_hh rows of 4 gates x 8 units x 8192 inputs need 1 MiB of shared memory per block."""
    case = on_device(make_case(CellSpec("lstm", "lstm"), B=2, H=8192, I=3, T=2), torch.float32, device)
    with pytest.raises(RuntimeError, match="persistent strategy cannot run this call: .*shared memory"):
        cuda_forward(case, "persistent")


def test_bad_arguments_raise_runtime_errors_naming_them(device):
    case = on_device(make_case(CellSpec("lstm", "lstm")), torch.float32, device)
    args = dict(zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peep", "w_proj"), case.inputs()))

    def call(strategy="auto", **changes):
        a = dict(args, **changes)
        return _ops().forward("lstm", "lstm", *a.values(), None, False, strategy, False)

    with pytest.raises(RuntimeError, match="h0 has dtype"):
        call(h0=args["h0"].half())
    if emulated(device):  # no second device: a meta c0 stops at the dispatcher (no meta kernel), not our check
        with pytest.raises(RuntimeError, match="Meta"):
            call(c0=args["c0"].to("meta"))
    else:
        with pytest.raises(RuntimeError, match="c0 must be on"):
            call(c0=args["c0"].cpu())
    with pytest.raises(RuntimeError, match="w_hh must have shape"):
        call(w_hh=args["w_hh"][:, :-1].contiguous())
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        call(x=args["x"].transpose(0, 1))
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        call(**{k: v.double() for k, v in args.items() if v is not None})
    with pytest.raises(RuntimeError, match="strategy must be"):
        call(strategy="fastest")


# ----------------------------------------------------------------------------
# anywhere: why the backend cannot run
# ----------------------------------------------------------------------------


def test_availability_names_the_reason(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "0")
    why = CudaBackend().availability()
    if _extension.has_cuda() and torch.cuda.is_available():
        assert why is None
        return
    assert isinstance(why, str) and why
    if _extension.load() is not None and not _extension.has_cuda():
        assert "without its CUDA kernels" in why
    with pytest.raises(RuntimeError, match="'cuda'"):
        backends.get("cuda")


def test_unsupported_names_device_and_dtype(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_EMULATE", "0")
    backend = CudaBackend()
    cell = CellSpec("lstm", "lstm")
    assert "CUDA tensors only" in backend.unsupported(cell, torch.zeros(1), None)
    cuda_like = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float64)
    assert "not float64" in backend.unsupported(cell, cuda_like, None)
    for dtype in DTYPES:
        assert backend.unsupported(cell, types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype), None) is None


@pytest.mark.parametrize("variable, attribute", [("FUSEDRNN_CUDA_FORWARD", "forward_strategy"),
                                                 ("FUSEDRNN_CUDA_BACKWARD", "backward_strategy")])
def test_strategy_environment_variables_are_checked(monkeypatch, variable, attribute):
    monkeypatch.setenv(variable, "persistent")
    assert getattr(CudaBackend(), attribute) == "persistent"
    monkeypatch.setenv(variable, "fastest")
    with pytest.raises(ValueError, match=variable):
        CudaBackend()
