"""Autocast for the recurrent modules: the custom ops are on none of autocast's lists.

The modules ask :func:`autocast_dtype` what autocast wants on the input's device, cast their
inputs, states and weights to it themselves (:func:`cast`), and run the ops with autocast off
(:func:`autocast_off`).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "autocast_off", "cast"]


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast asks for on ``device``, or None outside autocast.

    The custom ops are not on autocast's lists, so the modules cast their
    inputs, states and weights themselves, for every family and layout, as
    torch.nn's RNNs are cast on CUDA.  (On the CPU torch.nn casts only some:
    its GRU, its cells and its LSTM over a PackedSequence stay float32 there,
    an accident of which ATen ops are on the CPU autocast list.)
    """
    # one call answers the common case, autocast off everywhere (the per-device questions cost more,
    # on every call of a cell step); autocast exists for some device types only (not meta): asking
    # about others raises
    if not torch._C._is_any_autocast_enabled():
        return None
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_off(device: torch.device, cast_to: Optional[torch.dtype]):
    """Autocast disabled while the ops run, when it was on: the inputs are already cast, and the
    backends choose their own accumulation dtype (autocast would otherwise recast the matrix
    products inside a backend's kernels)."""
    return torch.autocast(device.type, enabled=False) if cast_to is not None else contextlib.nullcontext()


def cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None else t.to(dtype)
