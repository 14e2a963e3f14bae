"""IndRNN (a diagonal, element-wise recurrent weight ``u``) on the ``triton`` backend.

``h_t = act(xp_t + u * h_{t-1} + b_hh)`` has no product across units: each hidden unit of each batch
row is a recurrence of its own.  So one launch runs the whole sequence, each program a
``[BLOCK_B, BLOCK_H]`` tile of (batch row, unit) pairs carrying its h in registers from the first step
to the last, with no barrier and no exchange between programs; the backward likewise in reverse,
carrying dh.  The step's arithmetic is the Elman RNN's epilogue (:func:`.cell_math.rnn_epilogue`, with
``u * h`` as the accumulator in place of ``h W_hh^T``) and its backward twin, so both cells compute one
formula.

Packed sequences: the steps' first rows and row counts come as tables in processing order (as for the
persistent kernels); a batch row beyond a step's count is inactive there and keeps its carried value.
Sequences are sorted by length, longest first, so in the forward direction a row stops early (its
carried h is then its last step's: ``h_n``), and in the reverse direction it starts late (carrying
``h_0`` until its first step): one rule, ``active ? new : carried``, serves both, and the backward's
carried dh mirrors it (``dh_0`` is what a row carries past its first step).

The input projection is one GEMM before the launch (``b_ih`` folded in), the weight gradients single
products after it (:func:`fusedrnn.layer.weight_gradients`, which also sums ``du = Σ dA * h_prev``).
"""

from __future__ import annotations

import triton
import triton.language as tl

import torch

from ..cells import CellSpec
from ..layer import BackwardResult, ForwardResult, LayerWeights, Steps, weight_gradients
from .cell_math import load_block, load_vector, rnn_cell_backward, rnn_epilogue, store_block
from .sequence import _alloc, _rows, _step_tables

#: the (batch, unit) tile of a program; under the interpreter as the other kernels' fixed tiles
BLOCK_B, BLOCK_H = 16, 32


@triton.jit
def diagonal_forward_kernel(XP, H0, U, B_HH, OUT, H_N, OFFSETS, SIZES, T, B, H,
                            HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
                            BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows64 < B)[:, None] & (cols < H)[None, :]
    u = load_vector(U, 0, H, cols, cols < H)
    h = load_block(H0, rows64, cols, H, 0, H, mask)
    for p in range(T):
        first = tl.load(OFFSETS + p)  # the step's rows start there: its batch rows are rows64 from it
        active = mask & (rows64 < tl.load(SIZES + p))[:, None]
        h_new = rnn_epilogue(u * h, XP + first * H, B_HH, rows64, cols, active, H, HAS_BIAS, RELU)
        store_block(OUT + first * H, rows64, cols, H, 0, H, active, h_new)
        h = tl.where(active, h_new, h)
    store_block(H_N, rows64, cols, H, 0, H, mask, h)


@triton.jit
def diagonal_backward_kernel(DOUT, DH_N, OUT, U, DA, DH0, OFFSETS, SIZES, T, B, H,
                             RELU: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows64 < B)[:, None] & (cols < H)[None, :]
    u = load_vector(U, 0, H, cols, cols < H)
    dh = load_block(DH_N, rows64, cols, H, 0, H, mask)
    for q in range(T):
        p = T - 1 - q
        first = tl.load(OFFSETS + p)
        active = mask & (rows64 < tl.load(SIZES + p))[:, None]
        total = load_block(DOUT + first * H, rows64, cols, H, 0, H, active) + dh
        da = rnn_cell_backward(total, load_block(OUT + first * H, rows64, cols, H, 0, H, active), RELU)
        store_block(DA + first * H, rows64, cols, H, 0, H, active, da)
        dh = tl.where(active, da * u, dh)
    store_block(DH0, rows64, cols, H, 0, H, mask, dh)


def _grid(B: int, H: int):
    return (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H))


def sequence_forward(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes, reverse) -> ForwardResult:
    """One IndRNN layer-direction over the sequence (the buffers as :mod:`.sequence`'s driver makes them;
    ``c0``: None, there is no cell state)."""
    B, H = h0.shape
    X = _rows(x, batch_sizes)
    xp = X @ weights.w_ih.t() if weights.b_ih is None else torch.addmm(weights.b_ih, X, weights.w_ih.t())
    steps = Steps(x, batch_sizes, reverse)
    out = _alloc((steps.rows, H), x)
    h_n = _alloc(h0.shape, x)
    if steps.rows == 0:
        h_n.copy_(h0)
    else:
        offsets, sizes = _step_tables(steps, x.device)
        diagonal_forward_kernel[_grid(B, H)](
            xp, h0, weights.w_hh, weights.b_hh if weights.b_hh is not None else xp, out, h_n, offsets, sizes,
            len(steps.sizes), B, H, HAS_BIAS=weights.b_hh is not None, RELU=cell.mode == "relu",
            BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H)
    lead = x.shape[:-1]
    # no workspace: the activation's derivative follows from the output (docs/design.md section 4)
    return ForwardResult(out.reshape(*lead, H), h_n, None, out.new_empty((*lead, 0)))


def sequence_backward(cell: CellSpec, grad_out, grad_hn, grad_cn, x, h0, c0, weights: LayerWeights, batch_sizes,
                      reverse, out, workspace) -> BackwardResult:
    B, H = h0.shape
    steps = Steps(x, batch_sizes, reverse)
    X, OUT, dOUT = _rows(x, batch_sizes), _rows(out, batch_sizes), _rows(grad_out, batch_sizes)
    dA = _alloc((steps.rows, H), x)
    dh0 = _alloc(h0.shape, x)
    if steps.rows == 0:
        dh0.copy_(grad_hn)
    else:
        offsets, sizes = _step_tables(steps, x.device)
        diagonal_backward_kernel[_grid(B, H)](
            dOUT, grad_hn, OUT, weights.w_hh, dA, dh0, offsets, sizes, len(steps.sizes), B, H,
            RELU=cell.mode == "relu", BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H)
    dweights = weight_gradients(cell, weights, steps, dA, X, OUT, None, h0, None, None)
    return BackwardResult((dA @ weights.w_ih).reshape(x.shape), dh0, None, dweights)
