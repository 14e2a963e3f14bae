"""Sequence drivers: one layer-direction over a whole sequence with the Triton kernels.

:func:`sequence_forward` and :func:`sequence_backward` follow
:func:`fusedrnn.reference.sequence_forward` / ``sequence_backward`` step for
step (same row bookkeeping, :class:`fusedrnn.layer.Steps`), with the
per-step work in the kernels of :mod:`.recurrence`:

* input projection of all steps: one ``torch.addmm``;
* recurrence: a per-step fused kernel, or one persistent kernel for the whole
  sequence (``strategy``, see :func:`choose_forward_strategy`): small H on
  independent programs, or large H on programs meeting at a grid barrier
  each step (``grid_sync``; under the interpreter launched through
  :mod:`.concurrent_grid`, which runs the programs concurrently);
* backward: per step one fused kernel (pointwise backward and
  ``dh_{t-1} = dA W_hh``), then the weight gradients as single products over
  all steps.

Recurrent states are carried in float32 whatever the input dtype (float16 and
bfloat16 inputs accumulate in float32); outputs and the workspace have the
input dtype.
"""

from __future__ import annotations

import os
from typing import List, NamedTuple, Optional

import torch
import triton

from ..cells import CellSpec
from ..layer import BackwardResult, ForwardResult, LayerWeights, Steps, weight_gradients
from . import concurrent_grid, recurrence

#: kernels run through Triton's interpreter (read once: triton.jit decided at import)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

#: largest hidden size whose whole W_hh one program of the persistent kernel holds
PERSISTENT_MAX_H = 64

_FAMILY_CODE = {"lstm": 0, "gru": 1, "rnn": 2}

# fixed tiles under the interpreter: the smallest tl.dot takes (16), and 32 for the hidden
# dimensions, so that H=37 spans two tiles with a ragged last one (fewer, larger tiles run faster there)
_INTERPRET_META = dict(BLOCK_B=16, BLOCK_H=32, BLOCK_K=32)


def _step_configs():
    # (BLOCK_B, BLOCK_H, BLOCK_K, warps): few enough that the first call of a shape tunes in seconds
    tiles = [(16, 16, 128, 4), (16, 32, 64, 4), (16, 64, 64, 4), (32, 16, 64, 4),
             (32, 32, 64, 4), (32, 64, 32, 4), (64, 32, 32, 4), (64, 64, 32, 8)]
    return [triton.Config(dict(BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk), num_warps=w, num_stages=2)
            for bb, bh, bk, w in tiles]


def _persistent_configs():
    return [triton.Config(dict(BLOCK_B=bb), num_warps=w) for bb in (16, 32) for w in (4, 8)]


# Autotuning is keyed on the hidden and state widths only, never on the batch
# or the step's row count (it changes from step to step in a packed batch).
# Re-running a tuned kernel is harmless: every kernel reads one set of
# buffers and writes another.
if INTERPRET:
    _forward_step = recurrence.forward_step_kernel
    _backward_step = recurrence.backward_step_kernel
    _forward_persistent = recurrence.forward_persistent_kernel
else:  # pragma: no cover - GPU
    _forward_step = triton.autotune(_step_configs(), key=["H", "K"])(recurrence.forward_step_kernel)
    _backward_step = triton.autotune(_step_configs(), key=["H", "K"])(recurrence.backward_step_kernel)
    _forward_persistent = triton.autotune(_persistent_configs(), key=["H"])(recurrence.forward_persistent_kernel)


def _meta(**fixed):
    """Meta-parameters the sequence drivers pass: the fixed tiles under the interpreter, else the tuner's."""
    return {**fixed, **_INTERPRET_META} if INTERPRET else fixed


def _grid(rows, cols, block_rows, block_cols):
    if INTERPRET:
        return (triton.cdiv(rows, _INTERPRET_META[block_rows]), triton.cdiv(cols, _INTERPRET_META[block_cols]))
    return lambda meta: (triton.cdiv(rows, meta[block_rows]), triton.cdiv(cols, meta[block_cols]))


#: fill freshly allocated outputs with NaN, so an element no kernel writes fails the tests
POISON = os.environ.get("FUSEDRNN_TRITON_POISON") == "1"


def _alloc(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output or scratch buffer; NaN-filled when :data:`POISON` is set."""
    dtype = dtype or like.dtype
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _scratch(shape, like: torch.Tensor) -> torch.Tensor:
    """A float32 buffer for recurrent state (states are carried in float32 whatever the dtype)."""
    return _alloc(shape, like, torch.float32)


def _or(t: Optional[torch.Tensor], stand_in: torch.Tensor) -> torch.Tensor:
    """``t``, or for an absent tensor a stand-in pointer that the kernel's specialisation never dereferences."""
    return stand_in if t is None or t.numel() == 0 else t


class _Order(NamedTuple):
    """Step t, its rows, and the row counts it shares with its neighbours in processing order."""

    t: int
    n: int
    n_before: int  # rows continuing from the step processed before
    n_after: int  # rows continuing into the step processed next


def processing_order(steps: Steps) -> List[_Order]:
    order = list(steps.order)
    result = []
    for p, t in enumerate(order):
        n = steps.sizes[t]
        before = min(n, steps.sizes[order[p - 1]]) if p > 0 else 0
        after = min(n, steps.sizes[order[p + 1]]) if p + 1 < len(order) else 0
        result.append(_Order(t, n, before, after))
    return result


class _Flags(NamedTuple):
    """Compile-time description of a call, shared by all its launches."""

    FAMILY: int
    RESET_AFTER: bool
    PEEPHOLE: bool
    RELU: bool
    HAS_BIAS: bool
    UPCAST: bool
    IEEE: bool


def _flags(cell: CellSpec, weights: LayerWeights, dtype: torch.dtype) -> _Flags:
    upcast = INTERPRET and dtype == torch.bfloat16
    return _Flags(
        FAMILY=_FAMILY_CODE[cell.family],
        RESET_AFTER=cell.mode == "reset_after",
        PEEPHOLE=weights.w_peep is not None,
        RELU=cell.mode == "relu",
        HAS_BIAS=weights.b_hh is not None,
        UPCAST=upcast,
        IEEE=dtype == torch.float32 or upcast,
    )


def _rows(t: torch.Tensor, batch_sizes: Optional[torch.Tensor]) -> torch.Tensor:
    return t if batch_sizes is not None else t.flatten(0, 1)


def choose_forward_strategy(cell: CellSpec, x: torch.Tensor, weights: LayerWeights, requested: str = "auto") -> str:
    """``per_step``, ``persistent`` (small H) or ``grid_sync`` (large H); the last two take no projection.

    ``auto`` picks ``persistent`` where it applies, else ``per_step``, never
    ``grid_sync``.  That kernel matches the reference for every cell, dtype
    and layout under the interpreter, whose programs :mod:`.concurrent_grid`
    runs concurrently (the barrier's placement and count are tested there,
    and a planted barrier bug fails the tests); it has never run on a GPU,
    and what it needs there the interpreter cannot show:

    * memory ordering.  Under the interpreter every store is seen by every
      later load.  On a GPU each step's h reaches the programs on other SMs
      only through the barrier: ``debug_barrier``, a release ``atomic_add``
      at gpu scope (a scalar atomic, issued by one thread of the program),
      acquire polls, ``debug_barrier``, then ``.cg`` loads; that the
      release covers the stores of the program's other threads is the PTX
      memory model's cumulativity, which no test here exercises;
    * residency.  A Triton launch is not cooperative: one program per SM
      makes it likely, not certain, that all are resident at once (another
      stream's kernels, MPS, a MIG slice can hold SMs), and a program that
      never starts leaves the others spinning, a hang rather than an error;
    * speed: it has not been measured against ``per_step``.

    Request it explicitly; once its gpu-marked tests and the benchmark pass
    on a GPU, let auto choose it for hidden sizes of 768 and up.  A
    requested strategy that cannot run this call raises ValueError.
    """
    H = weights.w_hh.shape[0] // cell.gates
    small_ok = weights.w_proj is None and H <= PERSISTENT_MAX_H
    if requested == "auto":
        return "persistent" if small_ok else "per_step"
    if requested == "persistent" and not small_ok:
        raise ValueError(f"the persistent kernel needs hidden_size <= {PERSISTENT_MAX_H} and no projection, got H={H}")
    if requested == "grid_sync" and (weights.w_proj is not None or grid_sync_programs(H, x.device) is None):
        raise ValueError("the grid-synchronised kernel needs no projection, and a CUDA device with at least "
                         "cdiv(H, 16) SMs (or the interpreter)")
    if requested not in ("per_step", "persistent", "grid_sync"):
        raise ValueError(f"unknown forward strategy {requested!r}; expected auto, per_step, persistent or grid_sync")
    return requested


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------


def sequence_forward(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes, reverse,
                     strategy: str = "auto") -> ForwardResult:
    strategy = choose_forward_strategy(cell, x, weights, strategy)
    G = cell.gates
    H = weights.w_hh.shape[0] // G
    rows_x = _rows(x, batch_sizes)
    # the input projection of every step: one GEMM (b_ih folded in)
    if weights.b_ih is not None:
        xp = torch.addmm(weights.b_ih, rows_x, weights.w_ih.t())
    else:
        xp = rows_x @ weights.w_ih.t()
    steps = Steps(x, batch_sizes, reverse)
    N = steps.rows
    out = _alloc((N, h0.shape[-1]), x)
    ws = _alloc((N, cell.workspace_blocks * H), x)
    h_n = _alloc(h0.shape, x)
    c_n = _alloc(c0.shape, x) if c0 is not None else None
    flags = _flags(cell, weights, x.dtype)
    if N == 0:  # no steps: the final state is the initial one
        h_n.copy_(h0)
        if c_n is not None:
            c_n.copy_(c0)
    elif strategy == "persistent":
        _forward_persistent_run(flags, steps, xp, h0, c0, weights, out, ws, h_n, c_n, H)
    elif strategy == "grid_sync":
        _forward_grid_sync_run(flags, steps, xp, h0, c0, weights, out, ws, h_n, c_n, H)
    else:
        _forward_per_step_run(flags, steps, xp, h0, c0, weights, out, ws, h_n, c_n, H)
    lead = x.shape[:-1]
    return ForwardResult(out.reshape(*lead, h0.shape[-1]), h_n, c_n, ws.reshape(*lead, ws.shape[-1]))


def _forward_per_step_run(flags: _Flags, steps, xp, h0, c0, w: LayerWeights, out, ws, h_n, c_n, H):
    B, K = h0.shape
    h_state = [_scratch((B, K), xp), _scratch((B, K), xp)]
    c_state = [_scratch((B, H), xp), _scratch((B, H), xp)] if c0 is not None else [xp, xp]
    proj = w.w_proj is not None
    m_buf = _scratch((B, H), xp) if proj else None
    w_proj = w.w_proj.float() if proj else None
    two_phase = flags.FAMILY == _FAMILY_CODE["gru"] and not flags.RESET_AFTER
    z_scr = _scratch((B, H), xp) if two_phase else xp
    k_scr = _scratch((B, H), xp) if two_phase else xp
    G = w.w_hh.shape[0] // H
    gates = [(1, 0, 2), (2, 2, 1)] if two_phase else [(0, 0, G)]  # (phase, first gate, gates)
    for p, step in enumerate(processing_order(steps)):
        n, span = step.n, steps.span(step.t)
        src, dst = h_state[p % 2], h_state[(p + 1) % 2]
        for phase, first, count in gates:
            _forward_step[_grid(n, H, "BLOCK_B", "BLOCK_H")](
                xp[span], src, h0, c_state[p % 2], _or(c0, xp),
                w.w_hh, _or(w.b_hh, xp), _or(w.w_peep, xp),
                m_buf if proj else out[span], dst, c_state[(p + 1) % 2], _or(ws[span], xp),
                h_n, _or(c_n, xp), z_scr, k_scr,
                n, step.n_before, step.n_after, H, K,
                PHASE=phase, FIRST_GATE=first, NUM_GATES=count, PROJ=proj, **flags._asdict(), **_meta(),
            )
        if proj:
            # LSTMP: h_t = W_hr (o * tanh(c_t)) between the fused steps
            torch.matmul(m_buf[:n], w_proj.t(), out=dst[:n])
            out[span] = dst[:n].to(out.dtype)
            h_n[step.n_after:n] = dst[step.n_after:n].to(h_n.dtype)


def _step_tables(steps: Steps, device):
    """First row and row count of each step, in processing order, on the device."""
    order = list(steps.order)
    offsets = torch.tensor([steps.offsets[t] for t in order], dtype=torch.int64, device=device)
    sizes = torch.tensor([steps.sizes[t] for t in order], dtype=torch.int32, device=device)
    return offsets, sizes


def _forward_persistent_run(flags: _Flags, steps, xp, h0, c0, w: LayerWeights, out, ws, h_n, c_n, H):
    B = h0.shape[0]
    offsets, sizes = _step_tables(steps, xp.device)
    block_h = max(16, triton.next_power_of_2(H))
    if INTERPRET:
        grid = (triton.cdiv(B, _INTERPRET_META["BLOCK_B"]),)
        meta = dict(BLOCK_B=_INTERPRET_META["BLOCK_B"])
    else:  # pragma: no cover - GPU
        grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]),)  # noqa: E731
        meta = {}
    _forward_persistent[grid](
        xp, h0, _or(c0, xp), w.w_hh,
        _or(w.b_hh, xp), _or(w.w_peep, xp),
        out, _or(ws, xp), h_n, _or(c_n, xp), offsets, sizes,
        len(steps.sizes), B, H,
        FAMILY=flags.FAMILY, RESET_AFTER=flags.RESET_AFTER, PEEPHOLE=flags.PEEPHOLE, RELU=flags.RELU,
        HAS_BIAS=flags.HAS_BIAS, UPCAST=flags.UPCAST, IEEE=flags.IEEE, BLOCK_H=block_h, **meta,
    )


#: hidden columns per program of the grid-synchronised kernel
GRID_SYNC_BLOCK_H = 16


def grid_sync_programs(H: int, device) -> Optional[int]:
    """Programs the grid-synchronised kernel needs, or None where they cannot all be alive at once.

    Under the interpreter each program is a thread (:mod:`.concurrent_grid`),
    so any number can; on a GPU at most one per SM, so that all are resident.
    """
    programs = triton.cdiv(H, GRID_SYNC_BLOCK_H)
    if INTERPRET:
        return programs
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return programs if programs <= sms else None


def _forward_grid_sync_run(flags: _Flags, steps, xp, h0, c0, w: LayerWeights, out, ws, h_n, c_n, H):
    B = h0.shape[0]
    offsets, sizes = _step_tables(steps, xp.device)
    h_x = _scratch((2, B, H), xp)
    h_x[0] = h0
    c_state = c0.float().clone() if c0 is not None else xp
    two_phase = flags.FAMILY == _FAMILY_CODE["gru"] and not flags.RESET_AFTER
    z_scr = _scratch((B, H), xp) if two_phase else xp
    k_scr = _scratch((B, H), xp) if two_phase else xp
    counter = torch.zeros((1,), dtype=torch.int32, device=xp.device)
    T = len(steps.sizes)
    grid = (grid_sync_programs(H, xp.device),)
    args = (xp, w.w_hh, _or(w.b_hh, xp), _or(w.w_peep, xp),
            out, _or(ws, xp), h_x, c_state, z_scr, k_scr, counter, offsets, sizes, T, B, H)
    # BLOCK_K: the interpreter's 32, so that a small H spans several ragged K tiles as on the GPU
    meta = dict(**flags._asdict(), BLOCK_B=16, BLOCK_H=GRID_SYNC_BLOCK_H,
                BLOCK_K=_INTERPRET_META["BLOCK_K"] if INTERPRET else 64)
    if INTERPRET:
        # the interpreter runs programs one after another: the first to reach the barrier would wait forever
        concurrent_grid.launch(recurrence.forward_grid_sync_kernel, grid, *args, **meta)
    else:  # pragma: no cover - GPU
        recurrence.forward_grid_sync_kernel[grid](*args, **meta, num_warps=4)
    h_n.copy_(h_x[T % 2])
    if c_n is not None:
        c_n.copy_(c_state)


# ----------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------


def sequence_backward(cell: CellSpec, grad_out, grad_hn, grad_cn, x, h0, c0, weights: LayerWeights,
                      batch_sizes, reverse, out, workspace) -> BackwardResult:
    G = cell.gates
    H = weights.w_hh.shape[0] // G
    B, K = h0.shape
    steps = Steps(x, batch_sizes, reverse)
    X = _rows(x, batch_sizes)
    OUT = _rows(out, batch_sizes)
    WS = _rows(workspace, batch_sizes)
    dOUT = _rows(grad_out, batch_sizes)
    flags = _flags(cell, weights, x.dtype)
    dA = _alloc((steps.rows, G * H), x)
    dh0 = _alloc(h0.shape, x)
    dc0 = _alloc(c0.shape, x) if c0 is not None else None
    dh_state = [_scratch((B, K), x), _scratch((B, K), x)]
    dc_state = [_scratch((B, H), x), _scratch((B, H), x)] if c0 is not None else [x, x]
    two_phase = cell.family == "gru" and cell.mode == "reset_before"
    dk_scr = _scratch((B, H), x) if two_phase else x
    proj = weights.w_proj is not None
    if proj:
        w_proj = weights.w_proj.float()
        dH_total = _scratch((steps.rows, K), x)
        dm = _scratch((B, H), x)
    if steps.rows == 0:  # no steps: the gradient of the initial state is that of the final one
        dh0.copy_(grad_hn)
        if dc0 is not None:
            dc0.copy_(grad_cn)
    phases = (1, 2) if two_phase else (0,)
    order = processing_order(steps)
    for q, step in enumerate(reversed(order)):
        p = len(order) - 1 - q  # position in processing order
        n, span = step.n, steps.span(step.t)
        prev_span = steps.span(order[p - 1].t) if p > 0 else span  # only its first n_before rows are read
        src, dst = dh_state[q % 2], dh_state[(q + 1) % 2]
        dc_src, dc_dst = dc_state[q % 2], dc_state[(q + 1) % 2]
        if proj:
            # LSTMP: the kernel gets dm = dh_t W_hr (the gradient of o*tanh(c)); dh_t is kept for dW_hr
            a = step.n_after
            dh_t = dH_total[span]
            dout_t = dOUT[span]
            torch.add(dout_t[:a], src[:a], out=dh_t[:a])
            torch.add(dout_t[a:], grad_hn[a:n], out=dh_t[a:])
            torch.matmul(dh_t, w_proj, out=dm[:n])
        for phase in phases:
            _backward_step[_grid(n, K, "BLOCK_B", "BLOCK_K")](
                dOUT[span], dm if proj else src, dm if proj else grad_hn, dc_src,
                _or(grad_cn, x),
                _or(WS[span], x), _or(WS[prev_span], x),
                _or(c0, x), OUT[span], OUT[prev_span], h0,
                weights.w_hh, _or(weights.w_peep, x),
                dA[span], dst, dc_dst, dh0, _or(dc0, x), dk_scr,
                n, step.n_before, step.n_after, H, K,
                PHASE=phase, HAS_DOUT=not proj, FAMILY=flags.FAMILY, RESET_AFTER=flags.RESET_AFTER,
                PEEPHOLE=flags.PEEPHOLE, RELU=flags.RELU, UPCAST=flags.UPCAST, IEEE=flags.IEEE, **_meta(),
            )
    dweights = weight_gradients(cell, weights, steps, dA, X, OUT, WS, h0, c0, dH_total if proj else None)
    return BackwardResult((dA @ weights.w_ih).reshape(x.shape), dh0, dc0, dweights)
