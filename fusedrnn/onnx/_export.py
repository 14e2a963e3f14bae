"""``fusedrnn.onnx.export``: ``torch.onnx.export`` with fusedrnn's translations in place."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils import _pytree

from ._dynamo import translation_table
from .._export_limits import PACKED_INPUT_MESSAGE
from ._torchscript import register

__all__ = ["export"]


def _holds_packed(value) -> bool:
    """Whether ``value`` (args, kwargs) holds a PackedSequence anywhere (a namedtuple, so pytree would open it)."""
    found = []
    _pytree.tree_map(lambda leaf: found.append(leaf), value, is_leaf=lambda v: isinstance(v, PackedSequence))
    return any(isinstance(v, PackedSequence) for v in found)


def export(model, args=(), f=None, *, kwargs: Optional[Dict[str, Any]] = None, dynamo: bool = True,
           custom_translation_table: Optional[Dict[Callable, Callable]] = None, **options):
    """``torch.onnx.export(model, args, f, ...)`` for models holding fusedrnn layers, either exporter.

    Same arguments and result as :func:`torch.onnx.export`.  With ``dynamo=True`` (torch's default) fusedrnn's
    translations (:func:`fusedrnn.onnx.translation_table`) join ``custom_translation_table`` (the caller's
    entries win); with ``dynamo=False`` the symbolic functions that ``import fusedrnn`` registered do the work.
    Either way each layer-direction becomes ONNX's LSTM/GRU/RNN operator (an LSTM with ``proj_size``, a Loop),
    and the sequence length and batch stay dynamic where ``dynamic_shapes`` / ``dynamic_axes`` say so.

    A PackedSequence among the inputs raises RuntimeError saying what to do instead (ONNX has no packed
    layout): export on padded input, or ``fusedrnn.revert`` and ``dynamo=False``.
    """
    if _holds_packed((args, kwargs)):
        raise RuntimeError(PACKED_INPUT_MESSAGE)
    if dynamo:
        custom_translation_table = {**translation_table(), **(custom_translation_table or {})}
    else:
        register()
    return torch.onnx.export(model, args, f, kwargs=kwargs, dynamo=dynamo,
                             custom_translation_table=custom_translation_table, **options)
