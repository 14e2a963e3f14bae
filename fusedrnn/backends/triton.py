"""The ``triton`` backend: fused recurrent kernels written in Triton.

GPU tensors normally; CPU tensors too when ``TRITON_INTERPRET=1`` was set
before the kernels were imported (Triton's interpreter, how CI tests them).
Triton itself is imported only when this backend is first used, so importing
fusedrnn never needs it.

The forward runs one of three recurrences (:mod:`fusedrnn.triton_kernels`):
``persistent`` (hidden size <= 64: one launch for the whole sequence, each
program keeping all of W_hh and its rows' state on chip), ``grid_sync``
(CUDA, hidden size >= 768: one launch, hidden tiles on co-resident programs
meeting at a grid barrier each step) or ``per_step`` (one fused launch per
step, everything else and LSTM projections).  ``forward_strategy`` (or the
``FUSEDRNN_TRITON_FORWARD`` environment variable) forces one.  The backward
is one fused launch per step, then the weight gradients as single GEMMs.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

from ..cells import CellSpec
from .base import Backend, LayerWeights

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether Triton kernels run through the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend(Backend):
    name = "triton"

    def __init__(self):
        #: "auto", "per_step", "persistent" or "grid_sync" (see the module docstring)
        self.forward_strategy = os.environ.get("FUSEDRNN_TRITON_FORWARD", "auto")

    def availability(self) -> Optional[str]:
        try:
            importlib.import_module("triton")
        except ImportError as exc:
            return f"Triton is not installed ({exc})"
        if torch.cuda.is_available() or interpreting():
            return None
        return "no CUDA GPU (set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors through the interpreter)"

    def unsupported(self, cell: CellSpec, x: torch.Tensor, weights: LayerWeights) -> Optional[str]:
        if x.device.type == "cpu" and not interpreting():
            return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter); use the 'cpu' backend instead"
        if x.device.type not in ("cpu", "cuda"):
            return f"tensors on {x.device.type} are not supported (CUDA, or CPU under TRITON_INTERPRET=1)"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} is not supported (float32, float16, bfloat16)"
        return None

    @staticmethod
    def _kernels():
        from ..triton_kernels import launch

        return launch

    def forward(self, cell, x, h0, c0, weights, batch_sizes, reverse):
        return self._kernels().sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse,
                                                strategy=self.forward_strategy)

    def backward(self, cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace):
        return self._kernels().sequence_backward(
            cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace
        )
