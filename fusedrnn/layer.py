"""The layer contract, at the bottom of the stack: what one layer-direction
over a whole sequence takes and returns, and the bookkeeping every
implementation of it shares.

* :class:`LayerWeights`, :class:`ForwardResult`, :class:`BackwardResult`: the
  types a backend takes and returns (shapes: :mod:`fusedrnn.backends.base`);
* :class:`Steps`, :func:`previous_states`, :func:`as_rows`: which rows each
  time step owns (packed and padded input alike), in which order the steps
  run, and the state each row started from;
* :func:`join_states`, :func:`split_states`: a cell's states (sLSTM's h, c, n, m) as the layer's h and one
  cell state, and back;
* :func:`compute_dtype`: float32 arithmetic for 16-bit inputs;
* :func:`weight_gradients`: the gradients of the weights after the backward's
  recurrence, as single products over all steps, the same for every Python
  backend (the reference, the Triton sequence driver).  The C++ backends compute the
  same products once in C++ (csrc/include/fusedrnn/sequence_frame.h).

It imports only :mod:`fusedrnn.cells`: every other module may import it.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from .cells import CellSpec


class LayerWeights(NamedTuple):
    """The parameters of one layer-direction, in PyTorch's layout."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: Optional[torch.Tensor] = None
    b_hh: Optional[torch.Tensor] = None
    w_peep: Optional[torch.Tensor] = None
    w_proj: Optional[torch.Tensor] = None
    #: a cell's weights beyond torch.nn's layout (its record's ``extra_weights``, e.g. layer-norm gains),
    #: concatenated in the record's order into one vector ``[extra_blocks * H]``; None for the other cells
    w_extra: Optional[torch.Tensor] = None


class ForwardResult(NamedTuple):
    out: torch.Tensor
    h_n: torch.Tensor
    c_n: Optional[torch.Tensor]
    workspace: torch.Tensor


class BackwardResult(NamedTuple):
    """Gradients of the forward's inputs; ``dweights`` has None where the weight is None."""

    dx: torch.Tensor
    dh0: torch.Tensor
    dc0: Optional[torch.Tensor]
    dweights: LayerWeights

    @classmethod
    def from_op(cls, cell: CellSpec, grads, weights: LayerWeights) -> "BackwardResult":
        """From a compiled backward op's ``[dx, dh0, dc0, *dweights]`` (empty tensors where absent)."""
        dx, dh0, dc0, *dweights = grads
        return cls(dx, dh0, dc0 if cell.has_cell_state else None,
                   LayerWeights(*(None if w is None else g for g, w in zip(dweights, weights))))



def join_states(states: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A cell's states in its record's order (``(h,)``, ``(h, c)``, sLSTM's ``(h, c, n, m)``) as a layer takes
    them: ``(h, c)``, where c is every state after h concatenated along the last dimension (None without one).
    The modules take and return the record's states; the layers, ops and backends see ``(h, c)`` alone."""
    if len(states) == 1:
        return states[0], None
    return states[0], (states[1] if len(states) == 2 else torch.cat(tuple(states[1:]), dim=-1))


def split_states(cell: CellSpec, h: torch.Tensor, c: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """The inverse of :func:`join_states`: a layer's ``(h, c)`` as the record's states.  Each state split off
    ``c`` is a tensor of its own, not a view: the modules return them, and torch.nn's outputs may be edited
    in place (``c_n.mul_(2)``), which autograd refuses for one of several views of one tensor."""
    if c is None:
        return (h,)
    if cell.cell_state_blocks == 1:
        return (h, c)
    return (h, *(part.clone() for part in c.chunk(cell.cell_state_blocks, dim=-1)))


def check_like_x(name: str, t: torch.Tensor, shape, x: torch.Tensor) -> None:
    """An argument tensor of a layer call: ``shape``, and ``x``'s dtype and device (RuntimeError naming it).
    What :func:`fusedrnn.functional.layer` checks of each weight and state, and zoneout of its mask."""
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != x.dtype:
        raise RuntimeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; all must match")
    if t.device != x.device:
        raise RuntimeError(f"{name} is on {t.device} but x is on {x.device}; all must be on one device")


# ----------------------------------------------------------------------------
# dtypes and row bookkeeping
# ----------------------------------------------------------------------------

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


def as_rows(x: torch.Tensor, batch_sizes: Optional[torch.Tensor]) -> torch.Tensor:
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
# weight gradients after the recurrence
# ----------------------------------------------------------------------------


def hidden_side(cell: CellSpec, dA: torch.Tensor, WS: torch.Tensor, H: int) -> torch.Tensor:
    """The gradients of the hidden side of the gate pre-activations (h W_hh^T + b_hh) from those of the
    input side: the same except GRU reset_after's n gate, r * (W_hn h + b_hn), whose carries the factor r."""
    if cell.family == "gru" and cell.mode == "reset_after":
        return torch.cat([dA[:, :2 * H], dA[:, 2 * H:] * WS[:, :H].to(dA.dtype)], dim=1)
    return dA


def head_layout(w_hh: torch.Tensor, gates: int) -> Tuple[int, int, int]:
    """(hidden size, heads, head size) of a block-diagonal recurrent weight ``[G*H, D]`` (sLSTM's; no head
    without a unit)."""
    hidden, head_dim = w_hh.shape[0] // gates, w_hh.shape[1]
    return hidden, (hidden // head_dim if head_dim else 0), head_dim


def head_blocks(w_hh, gates: int):
    """sLSTM's recurrent weight ``w_hh`` [G*H, D] as each head's rows of every gate: [heads, G*D, D]."""
    _, heads, head_dim = head_layout(w_hh, gates)
    return w_hh.reshape(gates, heads, head_dim, head_dim).transpose(0, 1).reshape(heads, gates * head_dim, head_dim)


def block_diagonal_product(h, w_hh, gates: int):
    """``h R^T`` for sLSTM's block-diagonal R, of which ``w_hh`` [G*H, D] holds the non-zero blocks: row
    ``g*H + k*D + d`` (gate g, unit d of head k) reads the head's slice ``h[:, k*D:(k+1)*D]``.  A batched
    product over the heads (no dense zero-padded matrix); [n, G*H] in the gate-major layout of the biases."""
    n = h.shape[0]
    hidden, heads, head_dim = head_layout(w_hh, gates)
    y = torch.matmul(h.reshape(n, heads, head_dim).transpose(0, 1), head_blocks(w_hh, gates).transpose(1, 2))
    # [heads, n, G*D] -> [n, G, heads, D]
    return y.reshape(heads, n, gates, head_dim).permute(1, 2, 0, 3).reshape(n, gates * hidden)


def block_diagonal_product_t(da, w_hh, gates: int):
    """``da R`` for sLSTM's block-diagonal R (the gradient of h from that of ``h R^T``): each head's slice of
    the result from its own rows of every gate.  ``da`` [n, G*H] -> [n, H]."""
    n = da.shape[0]
    hidden, heads, head_dim = head_layout(w_hh, gates)
    a = da.reshape(n, gates, heads, head_dim).permute(2, 0, 1, 3).reshape(heads, n, gates * head_dim)
    return torch.matmul(a, head_blocks(w_hh, gates)).transpose(0, 1).reshape(n, hidden)


def block_diagonal_weight_gradient(dA: torch.Tensor, H_prev: torch.Tensor, w_hh: torch.Tensor,
                                   gates: int) -> torch.Tensor:
    """The gradient of a block-diagonal recurrent weight ``w_hh`` ``[G*H, D]`` (sLSTM's heads: row ``g*H + k*D + d``
    reads ``h[k*D:(k+1)*D]``): per head, its rows' pre-activation gradients times its slice of each row's previous
    h, summed over the rows; one batched product over the heads."""
    rows = H_prev.shape[0]
    hidden, heads, head_dim = head_layout(w_hh, gates)
    a = dA.reshape(rows, gates, heads, head_dim).permute(2, 1, 3, 0).reshape(heads, gates * head_dim, rows)
    g = torch.matmul(a, H_prev.reshape(rows, heads, head_dim).transpose(0, 1))  # [heads, G*D, D]
    return g.reshape(heads, gates, head_dim, head_dim).transpose(0, 1).reshape(gates * hidden, head_dim)


def weight_gradients(cell: CellSpec, w: LayerWeights, steps: Steps, dA: torch.Tensor, X: torch.Tensor,
                     OUT: torch.Tensor, WS: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                     dH_total: Optional[torch.Tensor]) -> LayerWeights:
    """All weight gradients as single products over every step, each in its weight's dtype.

    ``dA``: ``[N, G*H]`` gradients of the gate pre-activations (input side); ``X``, ``OUT``, ``WS``:
    the rows of the input, the outputs and the workspace; ``dH_total`` (projection only): each output
    row's gradient ``dout + dh``.  Sums accumulate in float32 at least."""
    H = w.w_hh.shape[0] // cell.gates
    acc = torch.promote_types(dA.dtype, torch.float32)
    H_prev = previous_states(OUT, h0, steps)
    dA_h = hidden_side(cell, dA, WS, H)
    dw_ih = dA.t() @ X
    if cell.record.recurrent == "diagonal":  # u * h element-wise (IndRNN): du sums dA * h_prev over the rows
        dw_hh = (dA_h.to(acc) * H_prev.to(acc)).sum(0)
    elif cell.record.recurrent == "block_diagonal":  # sLSTM's heads: each head's rows against its slice of h
        dw_hh = block_diagonal_weight_gradient(dA_h, H_prev, w.w_hh, cell.gates)
    elif cell.family == "gru" and cell.mode == "reset_before":
        dw_hh = torch.cat([dA[:, :2 * H].t() @ H_prev, dA[:, 2 * H:].t() @ WS[:, 3 * H:].to(dA.dtype)])
    else:
        dw_hh = dA_h.t() @ H_prev
    db_ih = dA.sum(0, dtype=acc) if w.b_ih is not None else None
    db_hh = dA_h.sum(0, dtype=acc) if w.b_hh is not None else None
    dw_peep = dw_proj = None
    if cell.has_cell_state and (w.w_peep is not None or w.w_proj is not None):
        C = WS[:, 4 * H:].to(acc)
        if w.w_peep is not None:  # sums over rows: da_i*c_prev, da_f*c_prev, da_o*c'
            C_prev = previous_states(C, c0.to(acc), steps)
            dAf = dA.to(acc)
            dw_peep = torch.cat([(dAf[:, :H] * C_prev).sum(0), (dAf[:, H:2 * H] * C_prev).sum(0),
                                 (dAf[:, 3 * H:] * C).sum(0)])
        if w.w_proj is not None:
            M = WS[:, 3 * H:4 * H].to(acc) * torch.tanh(C)
            dw_proj = dH_total.to(acc).t() @ M
    grads = (dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_proj)
    return LayerWeights(*(None if g is None else g.to(p.dtype) for g, p in zip(grads, w)))
