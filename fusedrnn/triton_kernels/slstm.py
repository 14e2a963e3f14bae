"""sLSTM (xLSTM's scalar-memory LSTM, as FlashRNN's ``slstm`` computes it) on the ``triton`` backend.

Per step, as :func:`fusedrnn.reference.slstm_step` and its hand-written backward: the block-diagonal
recurrent product ``h R^T`` by heads (:func:`fusedrnn.layer.block_diagonal_product`, one batched
``torch.matmul``, as the other drivers' cuBLAS products), then one fused pointwise kernel for the
step's exponential gating with its stabiliser: :func:`forward_step_kernel` reads the pre-activations
and the states (c, n, m), writes the workspace ``[ĩ, f̃, z, o, c', n', m']``, the output and the new
states; the backward's :func:`backward_step_kernel` is the step's derivative (m included, every clamp,
max and select passing the gradient as autograd's formulas do), then ``dh_prev = dA R`` by heads.
The weight gradients after the loop are :func:`fusedrnn.layer.weight_gradients` (per head for R).

NaN passes as in torch: every max, min and clamp here is a select that keeps a NaN operand.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cells import CellSpec
from ..layer import (BackwardResult, ForwardResult, LayerWeights, Steps, block_diagonal_product,
                     block_diagonal_product_t, previous_states, weight_gradients)
from .cell_math import device_function, load_block, load_vector, sigmoid, store_block, tanh
from .sequence import INTERPRET, _alloc, _rows, _scratch, processing_order

BLOCK_B = 16
BLOCK_H = 32 if INTERPRET else 64


@device_function
def _log_sigmoid(x):
    """log(σ(x)) = min(x, 0) - log(1 + exp(-|x|)), which never overflows."""
    return tl.where(x < 0.0, x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@device_function
def _nan_max(a, b):
    """torch.maximum: NaN if either is."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def forward_step_kernel(XP, HP, B_HH, STATE, H_STATE, OUT, WS, n, H,
                        HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rows64 < n)[:, None] & col_ok[None, :]
    i_raw = load_block(XP, rows64, cols, 4 * H, 0, H, mask) + load_block(HP, rows64, cols, 4 * H, 0, H, mask)
    f_raw = load_block(XP, rows64, cols, 4 * H, 1, H, mask) + load_block(HP, rows64, cols, 4 * H, 1, H, mask)
    z_raw = load_block(XP, rows64, cols, 4 * H, 2, H, mask) + load_block(HP, rows64, cols, 4 * H, 2, H, mask)
    o_raw = load_block(XP, rows64, cols, 4 * H, 3, H, mask) + load_block(HP, rows64, cols, 4 * H, 3, H, mask)
    if HAS_BIAS:
        i_raw += load_vector(B_HH, 0, H, cols, col_ok)
        f_raw += load_vector(B_HH, 1, H, cols, col_ok)
        z_raw += load_vector(B_HH, 2, H, cols, col_ok)
        o_raw += load_vector(B_HH, 3, H, cols, col_ok)
    c = load_block(STATE, rows64, cols, 3 * H, 0, H, mask)
    nrm = load_block(STATE, rows64, cols, 3 * H, 1, H, mask)
    m = load_block(STATE, rows64, cols, 3 * H, 2, H, mask)
    log_f = m + _log_sigmoid(f_raw)
    # a unit's first step (n = 0) takes m' = ĩ; then the larger log-gate, so i, f <= 1
    m_new = tl.where(nrm == 0.0, i_raw, _nan_max(i_raw, log_f))
    i = tl.exp(i_raw - m_new)
    i = tl.where(i > 1.0, 1.0, i)
    f = tl.exp(log_f - m_new)
    f = tl.where(f > 1.0, 1.0, f)
    z = tanh(z_raw)
    o = sigmoid(o_raw)
    c_new = f * c + i * z
    n_new = f * nrm + i
    n_new = tl.where(n_new < 1.0, 1.0, n_new)
    h = o * c_new / n_new
    store_block(WS, rows64, cols, 7 * H, 0, H, mask, i_raw)
    store_block(WS, rows64, cols, 7 * H, 1, H, mask, f_raw)
    store_block(WS, rows64, cols, 7 * H, 2, H, mask, z)
    store_block(WS, rows64, cols, 7 * H, 3, H, mask, o)
    store_block(WS, rows64, cols, 7 * H, 4, H, mask, c_new)
    store_block(WS, rows64, cols, 7 * H, 5, H, mask, n_new)
    store_block(WS, rows64, cols, 7 * H, 6, H, mask, m_new)
    store_block(STATE, rows64, cols, 3 * H, 0, H, mask, c_new)
    store_block(STATE, rows64, cols, 3 * H, 1, H, mask, n_new)
    store_block(STATE, rows64, cols, 3 * H, 2, H, mask, m_new)
    store_block(H_STATE, rows64, cols, H, 0, H, mask, h)
    store_block(OUT, rows64, cols, H, 0, H, mask, h)


@triton.jit
def backward_step_kernel(DOUT, DH, DSTATE, WS, PREV, DA, n, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """One step's rows: ``DH`` holds dh from the later steps (read only: the driver replaces it by
    ``dA R``); ``DSTATE`` the gradients of (c', n', m'), left as those of (c, n, m); ``PREV`` each row's
    (c, n, m) before the step; writes ``DA``, the pre-activations' gradients."""
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows64 < n)[:, None] & (cols < H)[None, :]
    dh = load_block(DOUT, rows64, cols, H, 0, H, mask) + load_block(DH, rows64, cols, H, 0, H, mask)
    i_raw = load_block(WS, rows64, cols, 7 * H, 0, H, mask)
    f_raw = load_block(WS, rows64, cols, 7 * H, 1, H, mask)
    z = load_block(WS, rows64, cols, 7 * H, 2, H, mask)
    o = load_block(WS, rows64, cols, 7 * H, 3, H, mask)
    c_new = load_block(WS, rows64, cols, 7 * H, 4, H, mask)
    n_new = tl.where(mask, load_block(WS, rows64, cols, 7 * H, 5, H, mask), 1.0)  # (>= 1; no 0/0 off the rows)
    m_new = load_block(WS, rows64, cols, 7 * H, 6, H, mask)
    c = load_block(PREV, rows64, cols, 3 * H, 0, H, mask)
    nrm = load_block(PREV, rows64, cols, 3 * H, 1, H, mask)
    m = load_block(PREV, rows64, cols, 3 * H, 2, H, mask)
    dc = load_block(DSTATE, rows64, cols, 3 * H, 0, H, mask)
    dn = load_block(DSTATE, rows64, cols, 3 * H, 1, H, mask)
    dm = load_block(DSTATE, rows64, cols, 3 * H, 2, H, mask)
    log_f = m + _log_sigmoid(f_raw)
    i = tl.exp(i_raw - m_new)  # <= 1: m' >= ĩ, so its clamp never binds
    f_exp = tl.exp(log_f - m_new)
    f = tl.where(f_exp > 1.0, 1.0, f_exp)
    ratio = c_new / n_new  # h' = o * ratio
    dc = dc + dh * o / n_new
    # n' = max(f n + i, 1): its gradient passes where f n + i >= 1 (clamp's, inclusive)
    ds = tl.where(f * nrm + i >= 1.0, dn - dh * o * ratio / n_new, 0.0)
    d_exp_i = (dc * z + ds) * i
    d_exp_f = tl.where(f_exp <= 1.0, (dc * c + ds * nrm) * f, 0.0)  # f's clamp binds only at a first step
    dm_new = dm - d_exp_i - d_exp_f
    # m' = ĩ at a unit's first step (n = 0), else max(ĩ, log f), whose gradient a tie shares evenly (maximum's)
    to_i = tl.where((nrm == 0.0) | (i_raw > log_f), 1.0, tl.where(i_raw < log_f, 0.0, 0.5))
    d_log_f = d_exp_f + dm_new * (1.0 - to_i)
    store_block(DA, rows64, cols, 4 * H, 0, H, mask, d_exp_i + dm_new * to_i)
    store_block(DA, rows64, cols, 4 * H, 1, H, mask, d_log_f * sigmoid(-f_raw))
    store_block(DA, rows64, cols, 4 * H, 2, H, mask, dc * i * (1.0 - z * z))
    store_block(DA, rows64, cols, 4 * H, 3, H, mask, dh * ratio * o * (1.0 - o))
    store_block(DSTATE, rows64, cols, 3 * H, 0, H, mask, dc * f)
    store_block(DSTATE, rows64, cols, 3 * H, 1, H, mask, ds * f)
    store_block(DSTATE, rows64, cols, 3 * H, 2, H, mask, d_log_f)


# ----------------------------------------------------------------------------
# Sequence drivers
# ----------------------------------------------------------------------------


def _grid(n: int, H: int):
    return (triton.cdiv(n, BLOCK_B), triton.cdiv(H, BLOCK_H))


def sequence_forward(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes, reverse) -> ForwardResult:
    """``c0``: the states (c, n, m) concatenated, [B, 3H] (as the layers pass sLSTM's states)."""
    H = weights.w_hh.shape[0] // cell.gates
    w_hh = weights.w_hh.float()
    X = _rows(x, batch_sizes).float()
    w_ih = weights.w_ih.float()
    xp = X @ w_ih.t() if weights.b_ih is None else torch.addmm(weights.b_ih.float(), X, w_ih.t())
    steps = Steps(x, batch_sizes, reverse)
    out = _alloc((steps.rows, H), x)
    ws = _alloc((steps.rows, cell.workspace_blocks * H), x)
    h = h0.float().clone()
    state = c0.float().clone()
    b_hh = weights.b_hh.float() if weights.b_hh is not None else None
    for step in processing_order(steps):
        n, span = step.n, steps.span(step.t)
        hp = block_diagonal_product(h[:n], w_hh, cell.gates)
        forward_step_kernel[_grid(n, H)](
            xp[span], hp, b_hh if b_hh is not None else hp, state, h, out[span], ws[span], n, H,
            HAS_BIAS=b_hh is not None, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H)
    lead = x.shape[:-1]
    return ForwardResult(out.reshape(*lead, H), h.to(x.dtype), state.to(x.dtype), ws.reshape(*lead, ws.shape[-1]))


def sequence_backward(cell: CellSpec, grad_out, grad_hn, grad_cn, x, h0, c0, weights: LayerWeights, batch_sizes,
                      reverse, out, workspace) -> BackwardResult:
    G = cell.gates
    H = weights.w_hh.shape[0] // G
    w_hh = weights.w_hh.float()
    steps = Steps(x, batch_sizes, reverse)
    X, OUT, WS, dOUT = (_rows(t, batch_sizes) for t in (x, out, workspace, grad_out))
    # each row's (c, n, m) before its step: the previous row's (c', n', m'), the workspace's last blocks
    prev = previous_states(WS[:, (cell.workspace_blocks - 3) * H:].float(), c0.float(), steps)
    dA = _scratch((steps.rows, G * H), x)
    dh = grad_hn.float().clone()
    dstate = grad_cn.float().clone()
    for step in reversed(processing_order(steps)):
        n, span = step.n, steps.span(step.t)
        backward_step_kernel[_grid(n, H)](dOUT[span], dh, dstate, WS[span], prev[span], dA[span], n, H,
                                          BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H)
        dh[:n] = block_diagonal_product_t(dA[span], w_hh, G)
    w = LayerWeights(*(None if t is None else t.float() for t in weights))
    dweights = weight_gradients(cell, w, steps, dA, X.float(), OUT.float(), WS.float(), h0.float(), c0.float(), None)
    dweights = LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(dweights, weights)))
    return BackwardResult((dA @ w.w_ih).to(x.dtype).reshape(x.shape), dh.to(x.dtype), dstate.to(x.dtype), dweights)
