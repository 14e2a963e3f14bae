"""Zoneout (Krueger et al. 2016) as haste computes it: its rate, its mask, and which backend runs it.

haste's definition (``haste_pytorch`` LSTM, GRU, IndRNN, LayerNormLSTM, LayerNormGRU), which fusedrnn
matches: after each step's cell update ``h_new``, the hidden state a step passes on (and writes to the
output sequence) is

* in training, ``h_t = m_t * h_new + (1 - m_t) * h_{t-1}``: a fresh mask ``m_t`` per step, each unit 1 (take
  the new value) with probability ``1 - zoneout`` and 0 (keep the previous value) with probability
  ``zoneout``, drawn once per call for the whole sequence, ``[T, B, H_out]`` (haste's ``zoneout_mask``:
  ``bernoulli_(1 - zoneout)``);
* in evaluation, the expectation ``h_t = zoneout * h_{t-1} + (1 - zoneout) * h_new``.

Only ``h`` is zoned out: an LSTM's cell state ``c`` is carried as its update computes it (haste's kernels
and its PyTorch reference do so; Krueger et al. zone ``c`` out too, with a rate of its own).

The mask is an input of the layer (:func:`fusedrnn.functional.layer`'s ``zoneout_mask``, the layout of
its output: ``[T, B, H_out]``, or ``[rows, H_out]`` for packed rows), which the kernels take as it is; the
modules draw it (:func:`draw_mask`).  In evaluation the layer hands the kernels a mask of ``1 - zoneout``
everywhere (:func:`mask_for`): the same formula then gives the expectation, so every backend has one
zoneout path.  The mask is not differentiated.

Which backend runs it: the ``cpu`` backend's kernels for every cell they run (LSTM with peepholes and
projection, where the projected h is blended; both GRU forms; RNN; IndRNN; LayerNorm LSTM and GRU), forward
and backward (csrc/cpu: a blend after each step's pass, and in the backward the gradient of each output row
split between the cell, ``m * d``, and the previous state, ``(1 - m) * d``); the ``reference`` backend for
every cell.  sLSTM runs it on the reference so far, and the ``cuda`` and ``triton`` backends have no zoneout
kernels yet: "auto" passes over a backend without zoneout kernels for the cell (warning once, as for any
fallback), and a named one refuses the call (RuntimeError: :meth:`fusedrnn.backends.base.Backend.runs_zoneout`).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

from .layer import check_like_x


def check_zoneout(zoneout, name: str = "zoneout") -> float:
    """``zoneout`` as a float, or ValueError naming ``name`` unless it is a number in [0, 1) (a rate of 1
    would never update the state; torch.nn's ``dropout`` check refuses bools likewise)."""
    if isinstance(zoneout, bool) or not isinstance(zoneout, numbers.Real) or not 0 <= zoneout < 1:
        raise ValueError(f"{name} should be a number in range [0, 1) representing the probability of keeping "
                         f"a unit's previous hidden state, got {zoneout!r}")
    return float(zoneout)


def draw_mask(zoneout: float, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A training mask: ``shape`` (the layer's output's), ``like``'s dtype and device, each element 1 with
    probability ``1 - zoneout`` (the unit takes its new value) and 0 with probability ``zoneout``; one
    ``Tensor.bernoulli_`` draw from the default generator of ``like``'s device, as haste draws it."""
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(1.0 - zoneout)


def check_mask(mask: Optional[torch.Tensor], zoneout: float, x: torch.Tensor, out_shape) -> None:
    """``zoneout_mask``'s checks, with torch.nn's exception types naming it: a tensor of the output's shape,
    ``x``'s dtype and device, given only with a nonzero ``zoneout`` (the rate says whether there is zoneout
    at all, as in haste)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"zoneout_mask must be a tensor or None, got {type(mask).__name__}")
    if zoneout == 0:
        raise ValueError("zoneout_mask is given but zoneout is 0: give the rate the mask was drawn with")
    check_like_x("zoneout_mask", mask, out_shape, x)  # the output's shape


def mask_for(zoneout: float, zoneout_mask: Optional[torch.Tensor], x: torch.Tensor,
             h0: torch.Tensor) -> torch.Tensor:
    """The mask a call with zoneout hands the backend: ``zoneout_mask`` (training), or in evaluation (None) one
    of the output's shape filled with ``1 - zoneout``, whose blend ``m * h_new + (1 - m) * h_prev`` is haste's
    expectation."""
    if zoneout_mask is not None:
        return zoneout_mask
    return x.new_full((*x.shape[:-1], h0.shape[-1]), 1.0 - zoneout)
