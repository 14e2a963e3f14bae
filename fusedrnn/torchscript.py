"""TorchScript (``torch.jit.script``, ``torch.jit.trace``) refuses fusedrnn's layers with one clear error.

Why refuse rather than make them compile: each layer-direction is a Python ``torch.library``
custom op (``fusedrnn::lstm_forward``), so a TorchScript program holding one could run only in a
Python process that imported fusedrnn, never where TorchScript is for (C++ ``torch::jit::load``,
mobile).  A trace would also freeze into the program the backend chosen while tracing and whether
the op kept its training workspace, and a scripted forward would need the layers' Python-only
argument handling (PackedSequence, backends, autocast) rewritten in TorchScript.  torch.nn's
twins do compile, with the same weights: :func:`fusedrnn.revert` swaps them in.

So ``torch.jit.script(model)`` stops at :func:`refuse_script` (the layers' ``__prepare_scriptable__``,
which torch.jit.script calls on every submodule before compiling anything) and ``torch.jit.trace``
at :func:`check_not_traced` (called by :func:`fusedrnn.functional.layer`, which every layer and
cell runs), both raising RuntimeError with :data:`MESSAGE`.  ``torch.onnx.export(...,
dynamo=False)`` traces too, but turns each op into ONNX operators (:mod:`fusedrnn.onnx`): it is
let through.
"""

from __future__ import annotations

import torch

__all__ = ["MESSAGE", "check_not_traced", "refuse_script"]

MESSAGE = (
    "fusedrnn's layers do not compile to TorchScript (torch.jit.script, torch.jit.trace and tools built on them): "
    "each runs a Python custom op (fusedrnn::<family>_forward) that a TorchScript program could only call in a "
    "Python process with fusedrnn imported, with the backend chosen while tracing frozen in.  Call "
    "fusedrnn.revert(model) first: it swaps them for torch.nn's LSTM/GRU/RNN and cells holding the same weights, "
    "which TorchScript compiles (peephole LSTMs and reset_after=False GRUs have no torch.nn twin: export them to "
    "ONNX instead, fusedrnn.onnx.export, or use torch.export / torch.compile)."
)


def refuse_script(module: torch.nn.Module):
    """``__prepare_scriptable__`` of fusedrnn's layers: torch.jit.script stops here, before compiling anything."""
    raise RuntimeError(f"torch.jit.script: {type(module).__name__}: {MESSAGE}")


def check_not_traced() -> None:
    """RuntimeError while torch.jit.trace records a call, except under torch.onnx.export's TorchScript exporter."""
    if torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        raise RuntimeError(f"torch.jit.trace: {MESSAGE}")
