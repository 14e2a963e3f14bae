"""The layer-normalised LSTM and GRU (haste's LayerNormLSTM / LayerNormGRU) on the ``triton`` backend.

The cells normalise each row of ``h W_hh^T`` over all its ``G*H`` gate units (docs/design.md section 4),
and the LSTM its new cell state over its ``H`` units: a reduction across the whole row inside the step.
So a program of these kernels owns ``BLOCK_B`` batch rows *whole* (all gate blocks of every unit) and
computes the statistics, the gates and the state update in one pass, with no reduction across programs:

* forward, per step: ``Ha = h W_hh^T`` (``torch.mm``, as the other drivers' products), then
  :func:`forward_step_kernel`: LN of ``Ha`` with ``γ_hh``, ``+ b_hh``, the gates with the normalised
  input side ``x̂``, ``c' = f c + i g``, LN of ``c'`` with ``γ_c, β_c``, ``h'``; the workspace in the
  cell table's layout (``[i, f, g, o, c']`` / ``[r, z, n, ĥ_n]``), the states updated in place;
* the input side for all steps at once: ``x̂ = LN(X W_ih^T; γ_ih) + b_ih`` (ATen's layer norm);
* backward: the recurrent product of every step is recomputed at once (``Ha = H_prev W_hh^T``, one GEMM:
  every ``h_prev`` is known after the forward, so the workspace stays the table's), then per step
  :func:`backward_step_kernel`: the gates' backward, the LN backward of ``c'`` (LSTM) and of ``Ha``
  (their row means inside the program), writing ``dA`` (the input side's), ``dHa`` and the gains'
  per-row terms, then ``dh_prev = dHa W_hh`` (+ the GRU's ``z * dh``) with ``torch.addmm``; after the
  loop the input side's LN backward (ATen), ``dW_ih``, ``dW_hh``, the biases and the gains as single
  products and row sums.

States and every gradient between steps are float32 whatever the input dtype; ``out`` and the workspace
have the input dtype (as :mod:`.sequence`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..cells import LAYER_NORM_EPS, CellSpec
from ..layer import BackwardResult, ForwardResult, LayerWeights, Steps, previous_states
from .cell_math import device_function, load_block, load_vector, sigmoid, sigmoid_grad, store_block, tanh, tanh_grad
from .sequence import INTERPRET, _alloc, _rows, _scratch, processing_order

EPS: tl.constexpr = tl.constexpr(LAYER_NORM_EPS)
#: batch rows per program (whole rows: the statistics need every unit of a row)
BLOCK_B = 16 if INTERPRET else 4


@device_function
def _row_stats(a0, a1, a2, a3, mask, width, G: tl.constexpr):
    """Mean and 1/sqrt(biased variance + eps) of each row of the G gate tiles (the masked columns are 0)."""
    total = tl.sum(a0, axis=1) + tl.sum(a1, axis=1) + tl.sum(a2, axis=1)
    if G == 4:
        total += tl.sum(a3, axis=1)
    mean = total / width
    d0 = tl.where(mask, a0 - mean[:, None], 0.0)
    d1 = tl.where(mask, a1 - mean[:, None], 0.0)
    d2 = tl.where(mask, a2 - mean[:, None], 0.0)
    var = tl.sum(d0 * d0, axis=1) + tl.sum(d1 * d1, axis=1) + tl.sum(d2 * d2, axis=1)
    if G == 4:
        d3 = tl.where(mask, a3 - mean[:, None], 0.0)
        var += tl.sum(d3 * d3, axis=1)
    return mean, 1.0 / tl.sqrt(var / width + EPS)


@device_function
def _stats(v, mask, width):
    """Mean and 1/sqrt(biased variance + eps) of each row of one tile."""
    mean = tl.sum(v, axis=1) / width
    d = tl.where(mask, v - mean[:, None], 0.0)
    return mean, 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / width + EPS)


@triton.jit
def forward_step_kernel(XH, HA, H_STATE, C_STATE, EXTRA, B_HH, OUT, WS, n, H,
                        LSTM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    G: tl.constexpr = 4 if LSTM else 3
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rows64 < n)[:, None] & col_ok[None, :]
    GH = G * H
    # ĥ = LN(h W_hh^T; γ_hh) + b_hh over the whole row (EXTRA: γ_ih, γ_hh blocks G..2G-1, γ_c, β_c)
    a0 = load_block(HA, rows64, cols, GH, 0, H, mask)
    a1 = load_block(HA, rows64, cols, GH, 1, H, mask)
    a2 = load_block(HA, rows64, cols, GH, 2, H, mask)
    a3 = load_block(HA, rows64, cols, GH, 3, H, mask) if LSTM else a2
    mean, rstd = _row_stats(a0, a1, a2, a3, mask, GH, G)
    k0 = (a0 - mean[:, None]) * rstd[:, None] * load_vector(EXTRA, G, H, cols, col_ok)
    k1 = (a1 - mean[:, None]) * rstd[:, None] * load_vector(EXTRA, G + 1, H, cols, col_ok)
    k2 = (a2 - mean[:, None]) * rstd[:, None] * load_vector(EXTRA, G + 2, H, cols, col_ok)
    if LSTM:
        k3 = (a3 - mean[:, None]) * rstd[:, None] * load_vector(EXTRA, G + 3, H, cols, col_ok)
    if HAS_BIAS:
        k0 += load_vector(B_HH, 0, H, cols, col_ok)
        k1 += load_vector(B_HH, 1, H, cols, col_ok)
        k2 += load_vector(B_HH, 2, H, cols, col_ok)
        if LSTM:
            k3 += load_vector(B_HH, 3, H, cols, col_ok)
    x0 = load_block(XH, rows64, cols, GH, 0, H, mask)
    x1 = load_block(XH, rows64, cols, GH, 1, H, mask)
    x2 = load_block(XH, rows64, cols, GH, 2, H, mask)
    if LSTM:
        i = sigmoid(x0 + k0)
        f = sigmoid(x1 + k1)
        g = tanh(x2 + k2)
        o = sigmoid(load_block(XH, rows64, cols, GH, 3, H, mask) + k3)
        c = f * load_block(C_STATE, rows64, cols, H, 0, H, mask) + i * g
        c_mean, c_rstd = _stats(tl.where(mask, c, 0.0), mask, H)
        y = (c - c_mean[:, None]) * c_rstd[:, None] * load_vector(EXTRA, 2 * G, H, cols, col_ok) \
            + load_vector(EXTRA, 2 * G + 1, H, cols, col_ok)
        h = o * tanh(y)
        store_block(WS, rows64, cols, 5 * H, 0, H, mask, i)
        store_block(WS, rows64, cols, 5 * H, 1, H, mask, f)
        store_block(WS, rows64, cols, 5 * H, 2, H, mask, g)
        store_block(WS, rows64, cols, 5 * H, 3, H, mask, o)
        store_block(WS, rows64, cols, 5 * H, 4, H, mask, c)
        store_block(C_STATE, rows64, cols, H, 0, H, mask, c)
    else:
        r = sigmoid(x0 + k0)
        z = sigmoid(x1 + k1)
        nn = tanh(x2 + r * k2)
        h = (1.0 - z) * nn + z * load_block(H_STATE, rows64, cols, H, 0, H, mask)
        store_block(WS, rows64, cols, 4 * H, 0, H, mask, r)
        store_block(WS, rows64, cols, 4 * H, 1, H, mask, z)
        store_block(WS, rows64, cols, 4 * H, 2, H, mask, nn)
        store_block(WS, rows64, cols, 4 * H, 3, H, mask, k2)
    store_block(H_STATE, rows64, cols, H, 0, H, mask, h)
    store_block(OUT, rows64, cols, H, 0, H, mask, h)


@device_function
def _ln_backward(dy0, dy1, dy2, dy3, n0, n1, n2, n3, rstd, mask, width, G: tl.constexpr):
    """The gradient of LN's input from ``dy = d(normalised) * gain`` of each gate tile and the normalised
    values ``n``: ``rstd * (dy - mean(dy) - n * mean(dy * n))``, the means over the whole row."""
    m1 = tl.sum(tl.where(mask, dy0, 0.0), axis=1) + tl.sum(tl.where(mask, dy1, 0.0), axis=1) \
        + tl.sum(tl.where(mask, dy2, 0.0), axis=1)
    m2 = tl.sum(tl.where(mask, dy0 * n0, 0.0), axis=1) + tl.sum(tl.where(mask, dy1 * n1, 0.0), axis=1) \
        + tl.sum(tl.where(mask, dy2 * n2, 0.0), axis=1)
    if G == 4:
        m1 += tl.sum(tl.where(mask, dy3, 0.0), axis=1)
        m2 += tl.sum(tl.where(mask, dy3 * n3, 0.0), axis=1)
    m1 = (m1 / width)[:, None]
    m2 = (m2 / width)[:, None]
    r = rstd[:, None]
    return r * (dy0 - m1 - n0 * m2), r * (dy1 - m1 - n1 * m2), r * (dy2 - m1 - n2 * m2), r * (dy3 - m1 - n3 * m2)


@triton.jit
def backward_step_kernel(DOUT, DH, DC, WS, PREV, HA, EXTRA, DA, DHA, DHHAT, DY, n, H,
                         LSTM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """One step's rows: ``DH`` (float32 state) holds dh from the later steps and leaves the part of
    dh_prev that is not through W_hh (the GRU's ``z * dh``; 0 for the LSTM); ``DC`` holds dc and leaves
    dc_prev.  ``PREV``: each row's c_prev (LSTM) or h_prev (GRU); ``HA``: its ``h_prev W_hh^T``.  Writes
    ``DA`` (the gradient of x̂), ``DHA`` (of ``Ha``), ``DHHAT`` (GRU: of ĥ, which differs from x̂'s in
    the n block) and ``DY`` (LSTM: of LN(c')'s output, for γ_c and β_c)."""
    G: tl.constexpr = 4 if LSTM else 3
    rows64 = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rows64 < n)[:, None] & col_ok[None, :]
    GH = G * H
    W = 5 * H if LSTM else 4 * H
    dh = load_block(DOUT, rows64, cols, H, 0, H, mask) + load_block(DH, rows64, cols, H, 0, H, mask)
    if LSTM:
        i = load_block(WS, rows64, cols, W, 0, H, mask)
        f = load_block(WS, rows64, cols, W, 1, H, mask)
        g = load_block(WS, rows64, cols, W, 2, H, mask)
        o = load_block(WS, rows64, cols, W, 3, H, mask)
        c = load_block(WS, rows64, cols, W, 4, H, mask)
        c_mean, c_rstd = _stats(c, mask, H)
        c_hat = (c - c_mean[:, None]) * c_rstd[:, None]
        ty = tanh(c_hat * load_vector(EXTRA, 2 * G, H, cols, col_ok) + load_vector(EXTRA, 2 * G + 1, H, cols, col_ok))
        d0 = dh * ty * sigmoid_grad(o)  # da_o, for now
        dy = dh * o * tanh_grad(ty)
        store_block(DY, rows64, cols, H, 0, H, mask, dy)
        gc = dy * load_vector(EXTRA, 2 * G, H, cols, col_ok)
        m1 = (tl.sum(tl.where(mask, gc, 0.0), axis=1) / H)[:, None]
        m2 = (tl.sum(tl.where(mask, gc * c_hat, 0.0), axis=1) / H)[:, None]
        dc = load_block(DC, rows64, cols, H, 0, H, mask) + c_rstd[:, None] * (gc - m1 - c_hat * m2)
        da_o = d0
        da_i = dc * g * sigmoid_grad(i)
        da_f = dc * load_block(PREV, rows64, cols, H, 0, H, mask) * sigmoid_grad(f)
        da_g = dc * i * tanh_grad(g)
        store_block(DC, rows64, cols, H, 0, H, mask, dc * f)
        store_block(DH, rows64, cols, H, 0, H, mask, tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32))
        x0, x1, x2, x3 = da_i, da_f, da_g, da_o
        e0, e1, e2, e3 = da_i, da_f, da_g, da_o  # ĥ's gradient: the same (a = x̂ + ĥ)
    else:
        r = load_block(WS, rows64, cols, W, 0, H, mask)
        z = load_block(WS, rows64, cols, W, 1, H, mask)
        nn = load_block(WS, rows64, cols, W, 2, H, mask)
        k = load_block(WS, rows64, cols, W, 3, H, mask)
        h_prev = load_block(PREV, rows64, cols, H, 0, H, mask)
        da_n = dh * (1.0 - z) * tanh_grad(nn)
        da_z = dh * (h_prev - nn) * sigmoid_grad(z)
        da_r = da_n * k * sigmoid_grad(r)
        store_block(DH, rows64, cols, H, 0, H, mask, dh * z)
        x0, x1, x2, x3 = da_r, da_z, da_n, da_n
        e0, e1, e2, e3 = da_r, da_z, da_n * r, da_n  # ĥ_n enters as r * ĥ_n
        store_block(DHHAT, rows64, cols, GH, 0, H, mask, e0)
        store_block(DHHAT, rows64, cols, GH, 1, H, mask, e1)
        store_block(DHHAT, rows64, cols, GH, 2, H, mask, e2)
    store_block(DA, rows64, cols, GH, 0, H, mask, x0)
    store_block(DA, rows64, cols, GH, 1, H, mask, x1)
    store_block(DA, rows64, cols, GH, 2, H, mask, x2)
    if LSTM:
        store_block(DA, rows64, cols, GH, 3, H, mask, x3)
    # ĥ = LN(Ha; γ_hh) + b_hh: back through the normalisation of the whole row
    a0 = load_block(HA, rows64, cols, GH, 0, H, mask)
    a1 = load_block(HA, rows64, cols, GH, 1, H, mask)
    a2 = load_block(HA, rows64, cols, GH, 2, H, mask)
    a3 = load_block(HA, rows64, cols, GH, 3, H, mask) if LSTM else a2
    mean, rstd = _row_stats(a0, a1, a2, a3, mask, GH, G)
    m = mean[:, None]
    s = rstd[:, None]
    y0, y1, y2, y3 = _ln_backward(
        e0 * load_vector(EXTRA, G, H, cols, col_ok), e1 * load_vector(EXTRA, G + 1, H, cols, col_ok),
        e2 * load_vector(EXTRA, G + 2, H, cols, col_ok),
        e3 * (load_vector(EXTRA, G + 3, H, cols, col_ok) if LSTM else 0.0),
        (a0 - m) * s, (a1 - m) * s, (a2 - m) * s, (a3 - m) * s, rstd, mask, GH, G)
    store_block(DHA, rows64, cols, GH, 0, H, mask, y0)
    store_block(DHA, rows64, cols, GH, 1, H, mask, y1)
    store_block(DHA, rows64, cols, GH, 2, H, mask, y2)
    if LSTM:
        store_block(DHA, rows64, cols, GH, 3, H, mask, y3)


# ----------------------------------------------------------------------------
# Sequence drivers
# ----------------------------------------------------------------------------


def _is_lstm(cell: CellSpec) -> bool:
    return cell.has_cell_state


def _float(weights: LayerWeights) -> LayerWeights:
    return LayerWeights(*(None if t is None else t.float() for t in weights))


def _grid(n: int):
    return (triton.cdiv(n, BLOCK_B),)


def _block_h(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


def _normalised(v: torch.Tensor) -> torch.Tensor:
    """Each row of ``v`` normalised (no gain): what the kernels multiply the gains by."""
    return F.layer_norm(v, (v.shape[-1],), eps=LAYER_NORM_EPS)


def sequence_forward(cell: CellSpec, x, h0, c0, weights: LayerWeights, batch_sizes, reverse) -> ForwardResult:
    lstm = _is_lstm(cell)
    G = cell.gates
    H = weights.w_hh.shape[0] // G
    w = _float(weights)
    gains = cell.split_extra(w.w_extra, H)
    X = _rows(x, batch_sizes).float()
    # x̂ for every step at once
    x_hat = F.layer_norm(X @ w.w_ih.t(), (G * H,), gains["ln_weight_ih"], None, LAYER_NORM_EPS)
    if w.b_ih is not None:
        x_hat = x_hat + w.b_ih
    steps = Steps(x, batch_sizes, reverse)
    out = _alloc((steps.rows, H), x)
    ws = _alloc((steps.rows, cell.workspace_blocks * H), x)
    h = h0.float().clone()
    c = c0.float().clone() if lstm else h
    ha = _scratch((h0.shape[0], G * H), x)
    for step in processing_order(steps):
        n, span = step.n, steps.span(step.t)
        torch.mm(h[:n], w.w_hh.t(), out=ha[:n])
        forward_step_kernel[_grid(n)](
            x_hat[span], ha, h, c, w.w_extra, w.b_hh if w.b_hh is not None else ha, out[span], ws[span], n, H,
            LSTM=lstm, HAS_BIAS=w.b_hh is not None, BLOCK_B=BLOCK_B, BLOCK_H=_block_h(H))
    lead = x.shape[:-1]
    return ForwardResult(out.reshape(*lead, H), h.to(x.dtype), c.to(x.dtype) if lstm else None,
                         ws.reshape(*lead, ws.shape[-1]))


def sequence_backward(cell: CellSpec, grad_out, grad_hn, grad_cn, x, h0, c0, weights: LayerWeights, batch_sizes,
                      reverse, out, workspace) -> BackwardResult:
    lstm = _is_lstm(cell)
    G = cell.gates
    H = weights.w_hh.shape[0] // G
    GH = G * H
    w = _float(weights)
    gains = cell.split_extra(w.w_extra, H)
    steps = Steps(x, batch_sizes, reverse)
    N = steps.rows
    X = _rows(x, batch_sizes).float()
    OUT, WS, dOUT = _rows(out, batch_sizes), _rows(workspace, batch_sizes), _rows(grad_out, batch_sizes)
    # every step's h_prev and recurrent product at once (known since the forward)
    H_prev = previous_states(OUT.float(), h0.float(), steps)
    Ha = H_prev @ w.w_hh.t()
    prev = previous_states(WS[:, 4 * H:].float(), c0.float(), steps) if lstm else H_prev
    dA = _scratch((N, GH), x)
    dHa = _scratch((N, GH), x)
    dH_hat = dA if lstm else _scratch((N, GH), x)
    dY = _scratch((N, H), x) if lstm else dA
    dh = grad_hn.float().clone()
    dc = grad_cn.float().clone() if lstm else dh
    for step in reversed(processing_order(steps)):
        n, span = step.n, steps.span(step.t)
        backward_step_kernel[_grid(n)](
            dOUT[span], dh, dc, WS[span], prev[span], Ha[span], w.w_extra, dA[span], dHa[span],
            dH_hat[span], dY[span] if lstm else dY, n, H, LSTM=lstm, BLOCK_B=BLOCK_B, BLOCK_H=_block_h(H))
        dh[:n].addmm_(dHa[span], w.w_hh)
    # the input side: x̂ = LN(Xa; γ_ih) + b_ih, all rows at once
    Xa = X @ w.w_ih.t()
    _, mean, rstd = torch.ops.aten.native_layer_norm(Xa, [GH], gains["ln_weight_ih"], None, LAYER_NORM_EPS)
    dXa, d_gain_ih, _ = torch.ops.aten.native_layer_norm_backward(dA, Xa, [GH], mean, rstd, gains["ln_weight_ih"],
                                                                  None, [True, True, False])
    d_extra = [d_gain_ih, (dH_hat * _normalised(Ha)).sum(0)]
    if lstm:
        d_extra += [(dY * _normalised(WS[:, 4 * H:].float())).sum(0), dY.sum(0)]
    grads = (dXa.t() @ X, dHa.t() @ H_prev,
             dA.sum(0) if w.b_ih is not None else None, dH_hat.sum(0) if w.b_hh is not None else None,
             None, None, torch.cat(d_extra))
    dweights = LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(grads, weights)))
    return BackwardResult((dXa @ w.w_ih).to(x.dtype).reshape(x.shape), dh.to(x.dtype),
                          dc.to(x.dtype) if lstm else None, dweights)
