"""TorchScript (``torch.jit.script``, ``torch.jit.trace``) refuses fusedrnn's layers with one clear error.

Why refuse rather than make them compile: ``torch.jit.script`` cannot compile the layers'
forward (PackedSequence, backend choice and autocast are Python), and ``torch.jit.trace`` would
record each layer-direction as one ``fusedrnn::<family>_forward`` call with the backend, its
strategy and whether it keeps the training workspace, as chosen on the tracing machine in the
tracing grad mode, frozen into the program (the trace's own check then fails on the last).
torch.nn's twins do compile, with the same weights: :func:`fusedrnn.revert` swaps them in.  A
program without Python is ``torch.export``'s and AOTInductor's job, which fusedrnn's layers
support with the backend resolved where the program runs (README.md, "Deployment").

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
    "script cannot compile their Python forward, and a trace would freeze in the backend, strategy and training "
    "workspace chosen while tracing.  Call fusedrnn.revert(model) first: it swaps them for torch.nn's "
    "LSTM/GRU/RNN and cells holding the same weights, which TorchScript compiles (peephole LSTMs and "
    "reset_after=False GRUs have no torch.nn twin).  For a program without Python use torch.export and "
    "AOTInductor, for ONNX fusedrnn.onnx.export."
)


def refuse_script(module: torch.nn.Module):
    """``__prepare_scriptable__`` of fusedrnn's layers: torch.jit.script stops here, before compiling anything."""
    raise RuntimeError(f"torch.jit.script: {type(module).__name__}: {MESSAGE}")


def check_not_traced() -> None:
    """RuntimeError while torch.jit.trace records a call, except under torch.onnx.export's TorchScript exporter."""
    if torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        raise RuntimeError(f"torch.jit.trace: {MESSAGE}")
