"""Plain-PyTorch reference: the equations of :mod:`fusedrnn.cells`, step by step.

This is the oracle every other backend is tested against, and the last-resort
backend.  It is written from the equations only (no ``torch.nn`` modules, no
``torch._VF`` RNN kernels), in two parts:

* :func:`sequence_forward`: the forward over a whole sequence, built from
  differentiable tensor operations, so autograd through it is an independent
  check of every hand-written backward and gives double backward for free;
* :func:`sequence_backward`: backpropagation through time written out by
  hand, with the work split every fused backend uses (per step one pointwise
  pass and one product with ``W_hh``; the weight gradients as single products
  over all steps after the loop).

float16 and bfloat16 inputs are computed in float32 and the results cast back.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .backends.base import BackwardResult, ForwardResult, LayerWeights
from .cells import CellSpec

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: float32 for 16-bit inputs."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


# ----------------------------------------------------------------------------
# Row bookkeeping shared by forward and backward
# ----------------------------------------------------------------------------


class Steps:
    """Which rows step t owns, and the order the steps run in.

    Padded input ``[T, B, I]`` is handled as packed rows with every batch size
    equal to B, so there is one code path.
    """

    def __init__(self, x: torch.Tensor, batch_sizes: Optional[torch.Tensor], reverse: bool):
        if batch_sizes is None:
            T, B = x.shape[0], x.shape[1]
            self.sizes: List[int] = [B] * T
        else:
            self.sizes = [int(s) for s in batch_sizes.tolist()]
        self.offsets: List[int] = []
        total = 0
        for n in self.sizes:
            self.offsets.append(total)
            total += n
        self.rows = total
        self.order: Sequence[int] = range(len(self.sizes) - 1, -1, -1) if reverse else range(len(self.sizes))

    def span(self, t: int) -> slice:
        return slice(self.offsets[t], self.offsets[t] + self.sizes[t])


def _as_rows(x: torch.Tensor, batch_sizes: Optional[torch.Tensor]) -> torch.Tensor:
    return x if batch_sizes is not None else x.flatten(0, 1)


def previous_states(rows: torch.Tensor, initial: torch.Tensor, steps: Steps) -> torch.Tensor:
    """For every row, the state it started its step from.

    ``rows`` holds each row's state after its step (``[N, D]``); ``initial``
    the initial state ``[B, D]``.  A row's previous state is the same batch
    entry's row of the step before it in processing order, or its initial
    state if that entry was not active there (its first step).
    """
    pieces = [None] * len(steps.sizes)
    prev_t = None
    for t in steps.order:
        n = steps.sizes[t]
        if prev_t is None:
            pieces[t] = initial[:n]
        else:
            m = min(n, steps.sizes[prev_t])
            carried = rows[steps.span(prev_t)][:m]
            pieces[t] = carried if m == n else torch.cat([carried, initial[m:n]])
        prev_t = t
    if not pieces:
        return rows.new_empty((0, rows.shape[-1]))
    return torch.cat(pieces)


# ----------------------------------------------------------------------------
# Forward: one step of each cell
# ----------------------------------------------------------------------------


def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def lstm_step(xp, h, c, w: LayerWeights):
    """One LSTM step. ``xp`` = x W_ih^T + b_ih for the active rows."""
    a = xp + _linear(h, w.w_hh, w.b_hh)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    if w.w_peep is not None:
        p_i, p_f, p_o = w.w_peep.chunk(3)
        a_i = a_i + p_i * c
        a_f = a_f + p_f * c
    i = torch.sigmoid(a_i)
    f = torch.sigmoid(a_f)
    g = torch.tanh(a_g)
    c_new = f * c + i * g
    if w.w_peep is not None:
        a_o = a_o + p_o * c_new
    o = torch.sigmoid(a_o)
    h_new = o * torch.tanh(c_new)
    if w.w_proj is not None:
        h_new = h_new @ w.w_proj.t()
    return h_new, c_new, torch.cat([i, f, g, o, c_new], dim=1)


def gru_step(xp, h, w: LayerWeights, reset_after: bool):
    """One GRU step (both forms); PyTorch's convention h' = (1-z)*n + z*h."""
    x_r, x_z, x_n = xp.chunk(3, dim=1)
    w_r, w_z, w_n = w.w_hh.chunk(3, dim=0)
    b_r, b_z, b_n = w.b_hh.chunk(3) if w.b_hh is not None else (None, None, None)
    r = torch.sigmoid(x_r + _linear(h, w_r, b_r))
    z = torch.sigmoid(x_z + _linear(h, w_z, b_z))
    if reset_after:
        k = _linear(h, w_n, b_n)
        n = torch.tanh(x_n + r * k)
    else:
        k = r * h
        n = torch.tanh(x_n + _linear(k, w_n, b_n))
    h_new = (1 - z) * n + z * h
    return h_new, torch.cat([r, z, n, k], dim=1)


def rnn_step(xp, h, w: LayerWeights, relu: bool):
    a = xp + _linear(h, w.w_hh, w.b_hh)
    return torch.relu(a) if relu else torch.tanh(a)


def _step(cell: CellSpec, xp, h, c, w: LayerWeights):
    """Dispatch to the cell's step: returns (h', c' or None, workspace rows)."""
    if cell.family == "lstm":
        return lstm_step(xp, h, c, w)
    if cell.family == "gru":
        h_new, ws = gru_step(xp, h, w, cell.mode == "reset_after")
        return h_new, None, ws
    h_new = rnn_step(xp, h, w, cell.mode == "relu")
    return h_new, None, xp.new_empty((xp.shape[0], 0))


def _replace_head(state: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``state`` with its first rows replaced by ``head``, out of place (autograd-safe)."""
    n = head.shape[0]
    return head if n == state.shape[0] else torch.cat([head, state[n:]])


def sequence_forward(
    cell: CellSpec,
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: Optional[torch.Tensor],
    weights: LayerWeights,
    batch_sizes: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> ForwardResult:
    """The forward of one layer-direction (shapes: :mod:`fusedrnn.backends.base`).

    Differentiable: autograd through it gives the reference gradients.
    """
    dtype = x.dtype
    cdt = compute_dtype(dtype)
    w = LayerWeights(*(_cast(t, cdt) for t in weights))
    steps = Steps(x, batch_sizes, reverse)
    rows = _as_rows(x, batch_sizes).to(cdt)
    xp = _linear(rows, w.w_ih, w.b_ih)  # the input projection of all steps: one product
    h = h0.to(cdt)
    c = _cast(c0, cdt)
    outs: List[Optional[torch.Tensor]] = [None] * len(steps.sizes)
    wss: List[Optional[torch.Tensor]] = [None] * len(steps.sizes)
    for t in steps.order:
        n = steps.sizes[t]
        h_new, c_new, ws = _step(cell, xp[steps.span(t)], h[:n], None if c is None else c[:n], w)
        outs[t], wss[t] = h_new, ws
        h = _replace_head(h, h_new)
        if c is not None:
            c = _replace_head(c, c_new)
    hout = h0.shape[-1]
    ws_width = cell.workspace_blocks * weights.w_hh.shape[0] // cell.gates
    out = torch.cat(outs) if outs else rows.new_empty((0, hout))
    workspace = torch.cat(wss) if wss else rows.new_empty((0, ws_width))
    lead = x.shape[:-1]
    return ForwardResult(
        out.reshape(*lead, hout).to(dtype),
        h.to(dtype),
        None if c is None else c.to(dtype),
        workspace.reshape(*lead, ws_width).to(dtype),
    )


# ----------------------------------------------------------------------------
# Backward through time, by hand
# ----------------------------------------------------------------------------


def _sig_grad(y):
    return y * (1 - y)


def _tanh_grad(y):
    return 1 - y * y


def _lstm_step_backward(dh, dc, ws, c_prev, w: LayerWeights):
    """Pointwise backward of one LSTM step.

    Returns (dA [n, 4H] gate pre-activation gradients, dc_prev, peephole
    gradient rows [n, 3H] or None, dm [n, H] = gradient of o*tanh(c')).
    """
    i, f, g, o, c_new = ws.chunk(5, dim=1)
    dm = dh @ w.w_proj if w.w_proj is not None else dh
    tc = torch.tanh(c_new)
    da_o = dm * tc * _sig_grad(o)
    dc_total = dc + dm * o * _tanh_grad(tc)
    peep_rows = None
    if w.w_peep is not None:
        p_i, p_f, p_o = w.w_peep.chunk(3)
        dc_total = dc_total + da_o * p_o
    da_i = dc_total * g * _sig_grad(i)
    da_f = dc_total * c_prev * _sig_grad(f)
    da_g = dc_total * i * _tanh_grad(g)
    dc_prev = dc_total * f
    if w.w_peep is not None:
        dc_prev = dc_prev + da_i * p_i + da_f * p_f
        peep_rows = torch.cat([da_i * c_prev, da_f * c_prev, da_o * c_new], dim=1)
    return torch.cat([da_i, da_f, da_g, da_o], dim=1), dc_prev, peep_rows


def sequence_backward(
    cell: CellSpec,
    grad_out: torch.Tensor,
    grad_hn: torch.Tensor,
    grad_cn: Optional[torch.Tensor],
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: Optional[torch.Tensor],
    weights: LayerWeights,
    batch_sizes: Optional[torch.Tensor],
    reverse: bool,
    out: torch.Tensor,
    workspace: torch.Tensor,
) -> BackwardResult:
    """Gradients of :func:`sequence_forward`, from its saved outputs."""
    dtype = x.dtype
    cdt = compute_dtype(dtype)
    w = LayerWeights(*(_cast(t, cdt) for t in weights))
    steps = Steps(x, batch_sizes, reverse)
    X = _as_rows(x, batch_sizes).to(cdt)
    OUT = _as_rows(out, batch_sizes).to(cdt)
    WS = _as_rows(workspace, batch_sizes).to(cdt)
    dOUT = _as_rows(grad_out, batch_sizes).to(cdt)
    h0c = h0.to(cdt)
    H_prev = previous_states(OUT, h0c, steps)
    H = w.w_hh.shape[0] // cell.gates
    G = cell.gates

    # gradient of each step's gate pre-activations: input side (x W_ih^T + b_ih)
    dA_x = X.new_empty((steps.rows, G * H))
    # hidden side (h W_hh^T + b_hh) differs from the input side only for GRU
    dA_h = dA_x if cell.family != "gru" else X.new_empty((steps.rows, G * H))
    dh = grad_hn.to(cdt).clone()
    dc = grad_cn.to(cdt).clone() if cell.family == "lstm" else None
    if cell.family == "lstm":
        C = WS[:, 4 * H:]
        C_prev = previous_states(C, c0.to(cdt), steps)
        peep_grad = X.new_zeros(3 * H) if w.w_peep is not None else None
        M = (WS[:, 3 * H:4 * H] * torch.tanh(C)) if w.w_proj is not None else None
        dH_total = X.new_empty(dOUT.shape) if w.w_proj is not None else None

    for t in reversed(steps.order):
        n, span = steps.sizes[t], steps.span(t)
        dh_t = dOUT[span] + dh[:n]
        if cell.family == "lstm":
            if dH_total is not None:
                dH_total[span] = dh_t
            dA, dc_prev, peep_rows = _lstm_step_backward(dh_t, dc[:n], WS[span], C_prev[span], w)
            dA_x[span] = dA
            dc[:n] = dc_prev
            if peep_rows is not None:
                peep_grad += peep_rows.sum(0)
            dh[:n] = dA @ w.w_hh
        elif cell.family == "gru":
            r, z, nn_, k = WS[span].chunk(4, dim=1)
            h_prev = H_prev[span]
            dn = dh_t * (1 - z)
            da_z = dh_t * (h_prev - nn_) * _sig_grad(z)
            da_n = dn * _tanh_grad(nn_)
            dh_prev = dh_t * z
            w_rz, w_n = w.w_hh[: 2 * H], w.w_hh[2 * H:]
            if cell.mode == "reset_after":
                da_r = da_n * k * _sig_grad(r)
                dA_h[span] = torch.cat([da_r, da_z, da_n * r], dim=1)
                dh_prev = dh_prev + dA_h[span] @ w.w_hh
            else:
                dk = da_n @ w_n  # gradient of r*h
                da_r = dk * h_prev * _sig_grad(r)
                dA_h[span] = torch.cat([da_r, da_z, da_n], dim=1)
                dh_prev = dh_prev + dk * r + dA_h[span, : 2 * H] @ w_rz
            dA_x[span] = torch.cat([da_r, da_z, da_n], dim=1)
            dh[:n] = dh_prev
        else:
            h_new = OUT[span]
            if cell.mode == "relu":
                # torch's threshold_backward: a select, so dh passes where h is NaN and an
                # infinite dh gives 0 (not NaN) where h <= 0
                dA = torch.where(h_new <= 0, torch.zeros_like(dh_t), dh_t)
            else:
                dA = dh_t * _tanh_grad(h_new)
            dA_x[span] = dA
            dh[:n] = dA @ w.w_hh

    # weight gradients: single products over all steps
    dw_ih = dA_x.t() @ X
    dX = dA_x @ w.w_ih
    if cell.family == "gru" and cell.mode == "reset_before":
        K = WS[:, 3 * H:]
        dw_hh = torch.cat([dA_h[:, : 2 * H].t() @ H_prev, dA_h[:, 2 * H:].t() @ K])
    else:
        dw_hh = dA_h.t() @ H_prev
    db_ih = dA_x.sum(0) if w.b_ih is not None else None
    db_hh = dA_h.sum(0) if w.b_hh is not None else None
    dw_peep = dw_proj = None
    if cell.family == "lstm":
        dw_peep = peep_grad
        if w.w_proj is not None:
            dw_proj = dH_total.t() @ M

    return BackwardResult(
        dX.reshape(x.shape).to(dtype),
        dh.to(dtype),
        dc.to(dtype) if dc is not None else None,
        LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(
            (dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_proj), weights))),
    )
