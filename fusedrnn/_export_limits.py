"""What a graph exporter cannot capture of fusedrnn's layers: PackedSequence input.

A PackedSequence's ``batch_sizes`` are data the layers branch and size their work on, which
``torch.export`` (and ``torch.onnx.export(..., dynamo=True)``, built on it) cannot trace, and
ONNX has no packed layout for ``torch.onnx.export(..., dynamo=False)`` to map them to.  torch.nn's
layers fail under ``torch.export`` too; their TorchScript-based ONNX export maps packing to the
ONNX operators' ``sequence_lens``, which is what :data:`PACKED_INPUT_MESSAGE` points to.
"""

from __future__ import annotations

import torch

__all__ = ["PACKED_INPUT_MESSAGE", "check_not_exporting_packed"]

PACKED_INPUT_MESSAGE = (
    "fusedrnn: a PackedSequence input cannot be exported (torch.export, torch.onnx.export): its batch_sizes are "
    "data, which an exported graph cannot branch on, and ONNX has no packed layout.  Either export the model on "
    "padded input (the recurrence then also runs over the padding: mask what lies past each length), or, for "
    "ONNX, call fusedrnn.revert(model) first and export with torch.onnx.export(..., dynamo=False): torch.nn's "
    "LSTM/GRU/RNN export pack_padded_sequence through the ONNX operators' sequence_lens (peephole LSTMs and "
    "reset_after=False GRUs have no torch.nn twin: padded input only)."
)


def check_not_exporting_packed() -> None:
    """RuntimeError with :data:`PACKED_INPUT_MESSAGE` while torch.export traces (called where batch_sizes arrive)."""
    if torch.compiler.is_exporting():
        raise RuntimeError(PACKED_INPUT_MESSAGE)
