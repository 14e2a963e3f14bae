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

from typing import Callable, Dict, List, Optional, Tuple

import torch

from .cells import LAYER_NORM_EPS, CellSpec
from .layer import (BackwardResult, ForwardResult, LayerWeights, Steps, as_rows, block_diagonal_product,
                    block_diagonal_product_t, compute_dtype, previous_states, weight_gradients, workspace_blocks)

#: the families whose hand-written backward (:func:`sequence_backward`) takes a ``zoneout_mask``; the others'
#: zoneout gradients come from autograd through :func:`sequence_forward` (:func:`autograd_backward`)
ZONEOUT_BACKWARD_FAMILIES = frozenset(("lstm", "gru", "rnn", "indrnn", "layer_norm_lstm", "layer_norm_gru"))


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


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


#: A cell's step: (xp, h, c, w) -> (h', c' or None, workspace rows), where xp = x W_ih^T + b_ih are
#: the step's rows of the input projection, h and c its states and w the layer's weights (compute dtype).
Step = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], LayerWeights],
                Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]

#: A cell's input side over all steps at once: (rows [N, I], w) -> xp [N, G*H]; by default x W_ih^T + b_ih.
Projection = Callable[[torch.Tensor, LayerWeights], torch.Tensor]

#: (family, mode) -> the cell's step: the definition of every cell in the table
_STEPS: Dict[Tuple[str, str], Step] = {}
#: (family, mode) -> the cell's input projection, where it is not x W_ih^T + b_ih (layer normalisation)
_PROJECTIONS: Dict[Tuple[str, str], Projection] = {}


def register_step(family: str, mode: str, step: Step, projection: Optional[Projection] = None) -> None:
    """Define the cell (family, mode) of the cell table (:func:`fusedrnn.cells.register`) by its step.
    Its backward is autograd through :func:`sequence_forward` unless the cell has a hand-written one
    (:func:`sequence_backward`): a new cell runs on the reference backend with this alone.
    ``projection``: the input side of every step as one computation over all rows, when it is not
    ``x W_ih^T + b_ih`` (a layer-normalised cell normalises ``x W_ih^T`` first); the step gets its rows."""
    CellSpec(family, mode)  # in the table
    _STEPS[(family, mode)] = step
    if projection is None:
        _PROJECTIONS.pop((family, mode), None)
    else:
        _PROJECTIONS[(family, mode)] = projection


def _gru(reset_after: bool) -> Step:
    def step(xp, h, c, w):
        h_new, ws = gru_step(xp, h, w, reset_after)
        return h_new, None, ws
    return step


def _rnn(relu: bool) -> Step:
    def step(xp, h, c, w):
        return rnn_step(xp, h, w, relu), None, xp.new_empty((xp.shape[0], 0))  # no workspace
    return step


def indrnn_step(xp, h, w: LayerWeights, relu: bool):
    """One IndRNN step: the recurrent weight ``w_hh`` is the vector u [H], applied element-wise."""
    a = xp + w.w_hh * h
    if w.b_hh is not None:
        a = a + w.b_hh
    return torch.relu(a) if relu else torch.tanh(a)


def _indrnn(relu: bool) -> Step:
    def step(xp, h, c, w):
        return indrnn_step(xp, h, w, relu), None, xp.new_empty((xp.shape[0], 0))  # no workspace
    return step


register_step("lstm", "lstm", lstm_step)
register_step("gru", "reset_after", _gru(True))
register_step("gru", "reset_before", _gru(False))
register_step("rnn", "tanh", _rnn(False))
register_step("rnn", "relu", _rnn(True))
register_step("indrnn", "relu", _indrnn(True))
register_step("indrnn", "tanh", _indrnn(False))


def layer_norm(v, gain, shift=None):
    """``(v - mean) / sqrt(var + eps) * gain (+ shift)`` over each row's last dimension (biased variance,
    eps = 1e-5: haste's and torch.nn.LayerNorm's), written from its definition."""
    mean = v.mean(-1, keepdim=True)
    centred = v - mean
    y = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + LAYER_NORM_EPS) * gain
    return y if shift is None else y + shift


def _normalised_projection(cell: CellSpec) -> Projection:
    """x̂ = LN(x W_ih^T; γ_ih) + b_ih over all rows at once."""
    def projection(rows, w):
        gains = cell.split_extra(w.w_extra, w.w_hh.shape[0] // cell.gates)
        xp = layer_norm(rows @ w.w_ih.t(), gains["ln_weight_ih"])
        return xp if w.b_ih is None else xp + w.b_ih
    return projection


def _recurrent_side(cell: CellSpec, h, w: LayerWeights):
    """ĥ = LN(h W_hh^T; γ_hh) + b_hh, and the cell's other gains and shifts."""
    gains = cell.split_extra(w.w_extra, w.w_hh.shape[0] // cell.gates)
    k = layer_norm(h @ w.w_hh.t(), gains["ln_weight_hh"])
    return (k if w.b_hh is None else k + w.b_hh), gains


def layer_norm_lstm_step(xp, h, c, w: LayerWeights):
    """One LayerNorm LSTM step (haste's LayerNormLSTM in PyTorch's gate order); ``xp`` = x̂."""
    cell = CellSpec("layer_norm_lstm", "layer_norm_lstm")
    k, gains = _recurrent_side(cell, h, w)
    a_i, a_f, a_g, a_o = (xp + k).chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(layer_norm(c_new, gains["ln_weight_c"], gains["ln_bias_c"]))
    return h_new, c_new, torch.cat([i, f, g, o, c_new], dim=1)


def layer_norm_gru_step(xp, h, c, w: LayerWeights):
    """One LayerNorm GRU step (haste's LayerNormGRU, PyTorch's convention h' = (1-z)*n + z*h); ``xp`` = x̂."""
    k, _ = _recurrent_side(CellSpec("layer_norm_gru", "layer_norm_gru"), h, w)
    x_r, x_z, x_n = xp.chunk(3, dim=1)
    k_r, k_z, k_n = k.chunk(3, dim=1)
    r, z = torch.sigmoid(x_r + k_r), torch.sigmoid(x_z + k_z)
    n = torch.tanh(x_n + r * k_n)
    return (1 - z) * n + z * h, None, torch.cat([r, z, n, k_n], dim=1)


register_step("layer_norm_lstm", "layer_norm_lstm", layer_norm_lstm_step,
              _normalised_projection(CellSpec("layer_norm_lstm", "layer_norm_lstm")))
register_step("layer_norm_gru", "layer_norm_gru", layer_norm_gru_step,
              _normalised_projection(CellSpec("layer_norm_gru", "layer_norm_gru")))


def slstm_step(xp, h, c, w: LayerWeights):
    """One sLSTM step (FlashRNN's ``slstm``); ``c`` holds the states c, n, m concatenated ([n, 3H]).

    The stabiliser m keeps the exponential gates in (0, 1]: m' is the larger of the two log-gates, so one of
    i, f is 1 and the other no more; h is c'/n', which m cancels from.  A unit whose n is 0 (its first step
    from zero states) takes m' = ĩ, as FlashRNN's kernels decide it unit by unit.  The clamps are FlashRNN's
    (i, f <= 1; n' >= 1, which holds by construction from n = 0 or n >= 1, so they change nothing there);
    ``clamp`` passes the gradient at its bound (``minimum``/``maximum`` would halve it at i = 1).  The backward
    (:func:`_slstm_step_backward`) differentiates m too (FlashRNN's treats it as a constant: the same gradients
    of h, which m cancels from, but not of c, n, m themselves)."""
    raw = xp + block_diagonal_product(h, w.w_hh, 4)
    if w.b_hh is not None:
        raw = raw + w.b_hh
    i_raw, f_raw, z_raw, o_raw = raw.chunk(4, dim=1)
    c_prev, n_prev, m_prev = c.chunk(3, dim=1)
    log_f = m_prev + torch.nn.functional.logsigmoid(f_raw)
    m_new = torch.where(n_prev == 0, i_raw, torch.maximum(i_raw, log_f))
    i = torch.exp(i_raw - m_new).clamp(max=1.0)
    f = torch.exp(log_f - m_new).clamp(max=1.0)
    z = torch.tanh(z_raw)
    o = torch.sigmoid(o_raw)
    c_new = f * c_prev + i * z
    n_new = (f * n_prev + i).clamp(min=1.0)
    states = torch.cat([c_new, n_new, m_new], dim=1)
    return o * c_new / n_new, states, torch.cat([i_raw, f_raw, z, o, states], dim=1)  # [ĩ, f̃, z, o, c', n', m']


register_step("slstm", "slstm", slstm_step)


def _step(cell: CellSpec, xp, h, c, w: LayerWeights):
    """The cell's step: returns (h', c' or None, workspace rows)."""
    return _STEPS[(cell.family, cell.mode)](xp, h, c, w)


def step_function(cell: CellSpec) -> Step:
    """The cell's registered step, ``step(xp, h, c, w) -> (h', c' or None, workspace rows)``."""
    return _STEPS[(cell.family, cell.mode)]


def input_projection(cell: CellSpec, rows: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    """The cell's input side of every row at once (``x W_ih^T + b_ih``, or its registered projection)."""
    projection = _PROJECTIONS.get((cell.family, cell.mode))
    return _linear(rows, w.w_ih, w.b_ih) if projection is None else projection(rows, w)


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
    zoneout: float = 0.0,
    zoneout_mask: Optional[torch.Tensor] = None,
) -> ForwardResult:
    """The forward of one layer-direction (shapes: :mod:`fusedrnn.backends.base`).

    Differentiable: autograd through it gives the reference gradients.  With ``zoneout`` (:mod:`fusedrnn.zoneout`)
    each step's new h is mixed with the previous one: by ``zoneout_mask`` (the output's layout; 1 takes the new
    value) when it is given (training; evaluation passes ``1 - zoneout`` everywhere), else by the expectation
    ``zoneout * h_prev + (1 - zoneout) * h_new``.  With zoneout the workspace of the Elman RNN and IndRNN keeps
    each step's h_new in one more block (:func:`fusedrnn.layer.workspace_blocks`), which their backward needs.
    """
    dtype = x.dtype
    cdt = compute_dtype(dtype)
    w = LayerWeights(*(_cast(t, cdt) for t in weights))
    steps = Steps(x, batch_sizes, reverse)
    rows = as_rows(x, batch_sizes).to(cdt)
    # the input projection of all steps: one product (then the cell's own work on it, if it has any)
    xp = input_projection(cell, rows, w)
    h = h0.to(cdt)
    c = _cast(c0, cdt)
    mask = None if zoneout_mask is None else as_rows(zoneout_mask, batch_sizes).to(cdt)
    keep_h_new = workspace_blocks(cell, True) > cell.workspace_blocks and (mask is not None or bool(zoneout))
    outs: List[Optional[torch.Tensor]] = [None] * len(steps.sizes)
    wss: List[Optional[torch.Tensor]] = [None] * len(steps.sizes)
    for t in steps.order:
        n = steps.sizes[t]
        h_new, c_new, ws = _step(cell, xp[steps.span(t)], h[:n], None if c is None else c[:n], w)
        if keep_h_new:
            ws = torch.cat([ws, h_new], dim=1)
        if mask is not None:  # zoneout in training: a select by a 0/1 mask, exact where it is 0 or 1
            m = mask[steps.span(t)]
            h_new = m * h_new + (1 - m) * h[:n]
        elif zoneout:  # its expectation (haste's formula)
            h_new = zoneout * h[:n] + (1 - zoneout) * h_new
        outs[t], wss[t] = h_new, ws
        h = _replace_head(h, h_new)
        if c is not None:
            c = _replace_head(c, c_new)
    hout = h0.shape[-1]
    ws_width = (workspace_blocks(cell, keep_h_new)) * weights.w_hh.shape[0] // cell.gates
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
# Backward through autograd (double backward; cells without a hand-written backward)
# ----------------------------------------------------------------------------


def autograd_backward(cell: CellSpec, tensors, batch_sizes, reverse, grad_outputs, create_graph: bool = False,
                      zoneout_mask: Optional[torch.Tensor] = None):
    """The gradients of ``tensors`` (x, h0, c0, then the weights; None where absent) given those of
    (out, h_n, c_n), by autograd through :func:`sequence_forward` (with ``zoneout_mask``: the forward's, not
    differentiated); a differentiable graph with ``create_graph`` (double backward).  Zeros where an input
    does not matter."""
    with torch.enable_grad():
        # a first derivative differentiates fresh leaves: the inputs themselves may be outputs of an earlier
        # call (a cell's state fed back), whose graph the engine must not walk here (it freed its buffers:
        # the earlier call's backward then raised); a double backward keeps them, to stay connected to them
        leaves = [None if t is None else (t if t.requires_grad and create_graph else t.detach().requires_grad_())
                  for t in tensors]
        res = sequence_forward(cell, leaves[0], leaves[1], leaves[2], LayerWeights(*leaves[3:]), batch_sizes, reverse,
                               zoneout_mask=None if zoneout_mask is None else zoneout_mask.detach())
        outs = [res.out, res.h_n] + ([res.c_n] if res.c_n is not None else [])
        # an output no input reaches (the empty out of a sequence without steps) has no graph to walk
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o.requires_grad]
        present = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], present, [g for _, g in pairs],
                                         create_graph=create_graph, allow_unused=True))
    out = []
    for t in leaves:
        if t is None:
            out.append(None)
        else:
            g = next(grads)
            out.append(torch.zeros_like(t) if g is None else g)
    return tuple(out)


# ----------------------------------------------------------------------------
# Backward through time, by hand
# ----------------------------------------------------------------------------


def _slstm_step_backward(dh, dstate, ws, prev):
    """Pointwise backward of one sLSTM step, the derivative of :func:`slstm_step` (m included): (dA [n, 4H]
    the pre-activations' gradients, the gradients of the step's (c, n, m) [n, 3H]).  ``dstate``: those of
    (c', n', m'); ``ws``: the step's workspace [ĩ, f̃, z, o, c', n', m'], from which i and f are recomputed
    (bitwise as the forward computed them); ``prev``: the step's (c, n, m).  Each clamp, max and select
    passes the gradient as autograd's formulas for them do."""
    i_raw, f_raw, z, o, c_new, n_new, m_new = ws.chunk(7, dim=1)
    c, n, m = prev.chunk(3, dim=1)
    dc, dn, dm = dstate.chunk(3, dim=1)
    log_f = m + torch.nn.functional.logsigmoid(f_raw)
    i = torch.exp(i_raw - m_new)  # <= 1: m' >= ĩ, so its clamp never binds
    f_exp = torch.exp(log_f - m_new)
    f = f_exp.clamp(max=1.0)
    ratio = c_new / n_new  # h' = o * ratio
    dc = dc + dh * o / n_new
    # n' = max(f n + i, 1): its gradient passes where f n + i >= 1 (clamp's, inclusive)
    ds = torch.where(f * n + i >= 1, dn - dh * o * ratio / n_new, 0.0)
    di = dc * z + ds
    df = dc * c + ds * n
    d_exp_i = di * i
    d_exp_f = torch.where(f_exp <= 1, df * f, 0.0)  # f's clamp binds only at a first step where log f > ĩ
    dm_new = dm - d_exp_i - d_exp_f
    # m' = ĩ at a unit's first step (n = 0), else max(ĩ, log f), whose gradient a tie shares evenly (maximum's)
    to_i = torch.where((n == 0) | (i_raw > log_f), 1.0, torch.where(i_raw < log_f, 0.0, 0.5))
    d_log_f = d_exp_f + dm_new * (1 - to_i)
    da = torch.cat([d_exp_i + dm_new * to_i, d_log_f * torch.sigmoid(-f_raw), dc * i * (1 - z * z),
                    dh * ratio * o * (1 - o)], dim=1)
    return da, torch.cat([dc * f, ds * f, d_log_f], dim=1)


def _sig_grad(y):
    return y * (1 - y)


def _tanh_grad(y):
    return 1 - y * y


def _lstm_step_backward(dh, dc, ws, c_prev, w: LayerWeights):
    """Pointwise backward of one LSTM step.

    Returns (dA [n, 4H] gate pre-activation gradients, dc_prev).  The peephole
    weights' gradients follow from dA after the loop (fusedrnn.layer.weight_gradients).
    """
    i, f, g, o, c_new = ws.chunk(5, dim=1)
    dm = dh @ w.w_proj if w.w_proj is not None else dh
    tc = torch.tanh(c_new)
    da_o = dm * tc * _sig_grad(o)
    dc_total = dc + dm * o * _tanh_grad(tc)
    if w.w_peep is not None:
        p_i, p_f, p_o = w.w_peep.chunk(3)
        dc_total = dc_total + da_o * p_o
    da_i = dc_total * g * _sig_grad(i)
    da_f = dc_total * c_prev * _sig_grad(f)
    da_g = dc_total * i * _tanh_grad(g)
    dc_prev = dc_total * f
    if w.w_peep is not None:
        dc_prev = dc_prev + da_i * p_i + da_f * p_f
    return torch.cat([da_i, da_f, da_g, da_o], dim=1), dc_prev


def _layer_norm_backward(dy, v, gain):
    """The gradient of ``v`` given that of ``LN(v; gain) (+ shift)`` (:func:`layer_norm`, over each row), and each
    row's share of the gain's gradient: ``rstd (g - mean(g) - v̂ mean(g v̂))`` with ``g = dy gain``, and ``dy v̂``."""
    centred = v - v.mean(-1, keepdim=True)
    rstd = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + LAYER_NORM_EPS)
    vn = centred * rstd
    g = dy * gain
    return rstd * (g - g.mean(-1, keepdim=True) - vn * (g * vn).mean(-1, keepdim=True)), dy * vn


def _layer_norm_sequence_backward(cell: CellSpec, w: LayerWeights, steps: Steps, X, OUT, WS, dOUT, h0, c0, dh, dc,
                                  MASK=None):
    """Backward through time of the layer-normalised cells (the split of the cpu kernels,
    csrc/cpu/layer_norm_recurrence.h): the products the statistics came from recomputed over all rows, per step
    the gates' backward, the normalisations' and ``dh_prev = dHa W_hh``, then the input side over all rows.
    Returns (dX, dh0, dc0 or None, weight gradients), in the compute dtype; ``dh`` / ``dc`` (the final states'
    gradients) are updated in place.  ``MASK``: zoneout's rows (as :func:`sequence_backward` takes it)."""
    H = w.w_hh.shape[0] // cell.gates
    gains = cell.split_extra(w.w_extra, H)
    lstm = cell.has_cell_state
    H_prev = previous_states(OUT, h0, steps)
    HA = H_prev @ w.w_hh.t()  # the hidden side's products, before normalisation
    dA_x, dA_h, dHA, dgain_hh = (X.new_empty(HA.shape) for _ in range(4))
    if lstm:
        C_prev = previous_states(WS[:, 4 * H:], c0, steps)
        dgain_c = X.new_empty((steps.rows, 2 * H))
    for t in reversed(steps.order):
        n, span = steps.sizes[t], steps.span(t)
        dh_t = dOUT[span] + dh[:n]
        if MASK is not None:  # zoneout: the cell gets m*d, the previous state (1-m)*d
            keep = (1 - MASK[span]) * dh_t
            dh_t = MASK[span] * dh_t
        if lstm:
            i, f, g, o, c_new = WS[span].chunk(5, dim=1)
            tc = torch.tanh(layer_norm(c_new, gains["ln_weight_c"], gains["ln_bias_c"]))
            dy = dh_t * o * _tanh_grad(tc)
            dc_norm, dgain_c[span, :H] = _layer_norm_backward(dy, c_new, gains["ln_weight_c"])
            dgain_c[span, H:] = dy
            dc_total = dc[:n] + dc_norm
            dA_x[span] = torch.cat([dc_total * g * _sig_grad(i), dc_total * C_prev[span] * _sig_grad(f),
                                    dc_total * i * _tanh_grad(g), dh_t * tc * _sig_grad(o)], dim=1)
            dc[:n] = dc_total * f
            dA_h[span] = dA_x[span]
            dh_direct = 0
        else:
            r, z, nn_, k = WS[span].chunk(4, dim=1)
            da_z = dh_t * (H_prev[span] - nn_) * _sig_grad(z)
            da_n = dh_t * (1 - z) * _tanh_grad(nn_)
            da_r = da_n * k * _sig_grad(r)
            dA_x[span] = torch.cat([da_r, da_z, da_n], dim=1)
            dA_h[span] = torch.cat([da_r, da_z, da_n * r], dim=1)  # ĥ_n enters as r * ĥ_n
            dh_direct = dh_t * z
        dHA[span], dgain_hh[span] = _layer_norm_backward(dA_h[span], HA[span], gains["ln_weight_hh"])
        dh[:n] = dh_direct + dHA[span] @ w.w_hh
        if MASK is not None:
            dh[:n] = dh[:n] + keep
    dXA, dgain_ih = _layer_norm_backward(dA_x, X @ w.w_ih.t(), gains["ln_weight_ih"])
    dgains = [dgain_ih.sum(0), dgain_hh.sum(0)] + ([dgain_c.sum(0)] if lstm else [])
    dweights = LayerWeights(dXA.t() @ X, dHA.t() @ H_prev, None if w.b_ih is None else dA_x.sum(0),
                            None if w.b_hh is None else dA_h.sum(0), None, None, torch.cat(dgains))
    return dXA @ w.w_ih, dh, dc if lstm else None, dweights


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
    zoneout_mask: Optional[torch.Tensor] = None,
) -> BackwardResult:
    """Gradients of :func:`sequence_forward`, from its saved outputs (a cell without a hand-written
    backward, or with zoneout one outside :data:`ZONEOUT_BACKWARD_FAMILIES`: autograd through the forward,
    recomputed; called outside a custom op's implementation, as fusedrnn.ops does, since autograd records
    nothing inside one).  ``zoneout_mask``: the forward's; the gradient d of a blended output row gives its
    cell ``m * d`` and its previous state ``(1 - m) * d`` besides the recurrent product's."""
    if not cell.record.hand_written_backward or (zoneout_mask is not None
                                                  and cell.family not in ZONEOUT_BACKWARD_FAMILIES):
        grads = autograd_backward(cell, (x, h0, c0, *weights), batch_sizes, reverse, (grad_out, grad_hn, grad_cn),
                                  zoneout_mask=zoneout_mask)
        return BackwardResult(grads[0], grads[1], grads[2], LayerWeights(*grads[3:]))
    dtype = x.dtype
    cdt = compute_dtype(dtype)
    w = LayerWeights(*(_cast(t, cdt) for t in weights))
    steps = Steps(x, batch_sizes, reverse)
    X = as_rows(x, batch_sizes).to(cdt)
    OUT = as_rows(out, batch_sizes).to(cdt)
    WS = as_rows(workspace, batch_sizes).to(cdt)
    dOUT = as_rows(grad_out, batch_sizes).to(cdt)
    MASK = None if zoneout_mask is None else as_rows(zoneout_mask, batch_sizes).to(cdt)
    h0c = h0.to(cdt)
    H_prev = previous_states(OUT, h0c, steps)
    H = w.w_hh.shape[0] // cell.gates
    G = cell.gates

    dh = grad_hn.to(cdt).clone()
    dc = grad_cn.to(cdt).clone() if cell.has_cell_state else None
    if cell.record.extra_weights:  # the layer-normalised cells
        dX, dh, dc, dweights = _layer_norm_sequence_backward(cell, w, steps, X, OUT, WS, dOUT, h0c, _cast(c0, cdt),
                                                             dh, dc, MASK)
        return BackwardResult(dX.reshape(x.shape).to(dtype), dh.to(dtype), None if dc is None else dc.to(dtype),
                              LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(dweights, weights))))
    # gradient of each step's gate pre-activations (input side: x W_ih^T + b_ih)
    dA_x = X.new_empty((steps.rows, G * H))
    dH_total = X.new_empty(dOUT.shape) if w.w_proj is not None else None  # each output row's gradient
    if c0 is not None:  # each row's cell state before its step (the last blocks of the workspace: c', or c', n', m')
        C_prev = previous_states(WS[:, (cell.workspace_blocks - cell.cell_state_blocks) * H:], c0.to(cdt), steps)

    for t in reversed(steps.order):
        n, span = steps.sizes[t], steps.span(t)
        dh_t = dOUT[span] + dh[:n]
        if MASK is not None:  # zoneout: the cell's update gets m*d, the previous state (1-m)*d (added below)
            keep = (1 - MASK[span]) * dh_t
            dh_t = MASK[span] * dh_t
        if cell.family == "lstm":
            if dH_total is not None:
                dH_total[span] = dh_t
            dA, dc_prev = _lstm_step_backward(dh_t, dc[:n], WS[span], C_prev[span], w)
            dA_x[span] = dA
            dc[:n] = dc_prev
            dh[:n] = dA @ w.w_hh
        elif cell.family == "slstm":
            dA, dc[:n] = _slstm_step_backward(dh_t, dc[:n], WS[span], C_prev[span])
            dA_x[span] = dA
            dh[:n] = block_diagonal_product_t(dA, w.w_hh, G)
        elif cell.family == "gru":
            r, z, nn_, k = WS[span].chunk(4, dim=1)
            h_prev = H_prev[span]
            dn = dh_t * (1 - z)
            da_z = dh_t * (h_prev - nn_) * _sig_grad(z)
            da_n = dn * _tanh_grad(nn_)
            dh_prev = dh_t * z
            w_rz, w_n = w.w_hh[: 2 * H], w.w_hh[2 * H:]
            if cell.mode == "reset_after":
                # the hidden side of the n gate is r * (W_hn h + b_hn): its gradient carries the factor r
                da_r = da_n * k * _sig_grad(r)
                dh_prev = dh_prev + torch.cat([da_r, da_z, da_n * r], dim=1) @ w.w_hh
            else:
                dk = da_n @ w_n  # gradient of r*h
                da_r = dk * h_prev * _sig_grad(r)
                dh_prev = dh_prev + dk * r + torch.cat([da_r, da_z], dim=1) @ w_rz
            dA_x[span] = torch.cat([da_r, da_z, da_n], dim=1)
            dh[:n] = dh_prev
        else:  # rnn and indrnn: h' = act(a)
            # with zoneout the output is the blend: h_new is the workspace's last block
            h_new = OUT[span] if MASK is None else WS[span][:, -H:]
            if cell.mode == "relu":
                # torch's threshold_backward: a select, so dh passes where h is NaN and an
                # infinite dh gives 0 (not NaN) where h <= 0
                dA = torch.where(h_new <= 0, torch.zeros_like(dh_t), dh_t)
            else:
                dA = dh_t * _tanh_grad(h_new)
            dA_x[span] = dA
            # IndRNN's recurrent term is u * h, element-wise: its gradient too
            dh[:n] = dA * w.w_hh if cell.record.recurrent == "diagonal" else dA @ w.w_hh
        if MASK is not None:
            dh[:n] = dh[:n] + keep

    # weight gradients: single products over all steps (fusedrnn.layer, shared with the Triton sequence driver)
    dweights = weight_gradients(cell, w, steps, dA_x, X, OUT, WS, h0c, _cast(c0, cdt), dH_total)
    return BackwardResult(
        (dA_x @ w.w_ih).reshape(x.shape).to(dtype),
        dh.to(dtype),
        dc.to(dtype) if dc is not None else None,
        LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(dweights, weights))),
    )
