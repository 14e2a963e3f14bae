"""The ``triton`` backend: fused recurrent kernels written in Triton.

GPU tensors normally; CPU tensors too when ``TRITON_INTERPRET=1`` was set
before the kernels were imported (Triton's interpreter, how CI tests them).
Triton itself is imported only when this backend is first used, so importing
fusedrnn never needs it.

The forward runs one of three recurrences (:mod:`fusedrnn.triton_kernels`):
``persistent`` (hidden size <= 64, no projection: one launch for the whole
sequence, each program keeping all of W_hh and its rows' state on chip),
``per_step`` (one fused launch per step: everything else, LSTM projections
included) and ``grid_sync`` (for large hidden sizes, no projection: one
launch, hidden tiles on co-resident programs meeting at a grid barrier each
step).  ``grid_sync`` is tested under the interpreter too, where
:mod:`fusedrnn.triton_kernels.concurrent_grid` runs the programs of its grid
concurrently (a thread each), but it stays opt-in until it has run on a GPU:
the interpreter cannot show its barrier's memory ordering nor that all its
programs are resident at once (see
:func:`fusedrnn.triton_kernels.sequence.choose_forward_strategy`).
``forward_strategy`` (or the ``FUSEDRNN_TRITON_FORWARD`` environment
variable) forces one.  The backward is one fused launch per step, then the
weight gradients as single GEMMs.  IndRNN (an element-wise recurrent weight,
no product per step) runs as one launch per sequence forward and one
backward, whatever the strategy (:mod:`fusedrnn.triton_kernels.diagonal`); the
layer-normalised LSTM and GRU run their own per-step kernels, a program per
whole batch rows (:mod:`fusedrnn.triton_kernels.layer_norm`), and sLSTM its
exponential gating after a product by heads (:mod:`fusedrnn.triton_kernels.slstm`).

``cuda_graphs`` (or ``FUSEDRNN_TRITON_CUDA_GRAPHS=1``) replays per-step
sequences (forward and backward) from captured CUDA graphs, one per shape,
so small shapes are not launch-bound.  Off by default: each distinct shape
(and packed ``batch_sizes``) captures a graph and keeps static buffers.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

from ..cells import BUILT_IN_CELLS, INDRNN_CELLS, LAYER_NORM_CELLS, SLSTM_CELLS, CellSpec
from .base import Backend, BackwardResult, ForwardResult, LayerWeights

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: the cells with kernels of their own, no strategy to choose (family -> module of fusedrnn.triton_kernels):
#: IndRNN one launch per sequence, the layer-normalised cells a program per whole rows, sLSTM its gating
_OWN_KERNELS = {"indrnn": "diagonal", "layer_norm_lstm": "layer_norm", "layer_norm_gru": "layer_norm",
                "slstm": "slstm"}


def interpreting() -> bool:
    """Whether Triton kernels run through the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend(Backend):
    name = "triton"
    #: the built-in cells and those of _OWN_KERNELS
    cells = BUILT_IN_CELLS | INDRNN_CELLS | LAYER_NORM_CELLS | SLSTM_CELLS
    #: no zoneout kernels yet: "auto" takes the reference for zoneout
    zoneout_cells = frozenset()

    def __init__(self):
        #: "auto", "per_step", "persistent" or "grid_sync" (see the module docstring)
        self.forward_strategy = os.environ.get("FUSEDRNN_TRITON_FORWARD", "auto")
        #: replay per-step sequences on CUDA from captured graphs
        self.cuda_graphs = os.environ.get("FUSEDRNN_TRITON_CUDA_GRAPHS") == "1"
        self._graphs = None

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
        from ..triton_kernels import sequence

        return sequence

    @staticmethod
    def _own_kernels(cell: CellSpec):
        """The module of a cell with kernels of its own (no strategy), or None (:mod:`.sequence`'s cells)."""
        name = _OWN_KERNELS.get(cell.family)
        return None if name is None else importlib.import_module(f"..triton_kernels.{name}", __package__)

    def _graph_cache(self, x, per_step: bool):
        """The graph cache when this call should be replayed from a CUDA graph, else None."""
        if not (self.cuda_graphs and per_step and x.is_cuda):
            return None
        if self._graphs is None:
            from ..triton_kernels.graphs import GraphCache

            self._graphs = GraphCache()
        return self._graphs

    def forward(self, cell, x, h0, c0, weights, batch_sizes, reverse, for_backward=True):
        own = self._own_kernels(cell)
        if own is not None:
            return own.sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse)
        kernels = self._kernels()
        strategy = kernels.choose_forward_strategy(cell, x, weights, self.forward_strategy)

        def run(x, h0, c0, *w):
            return kernels.sequence_forward(cell, x, h0, c0, LayerWeights(*w), batch_sizes, reverse, strategy=strategy)

        tensors = (x, h0, c0, *weights)
        graphs = self._graph_cache(x, strategy == "per_step")
        if graphs is None:
            return run(*tensors)
        from ..triton_kernels.graphs import tensor_key

        key = ("forward", cell, reverse, _sizes_key(batch_sizes), tensor_key(tensors))
        return ForwardResult(*graphs.run(key, run, tensors))

    def backward(self, cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace,
                 need_dx=True, need_dweights=True):
        own = self._own_kernels(cell)
        if own is not None:
            return own.sequence_backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse,
                                         out, workspace)
        kernels = self._kernels()

        def run(grad_out, grad_hn, grad_cn, x, h0, c0, out, workspace, *w):
            result = kernels.sequence_backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, LayerWeights(*w),
                                               batch_sizes, reverse, out, workspace)
            return (result.dx, result.dh0, result.dc0, *result.dweights)

        tensors = (grad_out, grad_hn, grad_cn, x, h0, c0, out, workspace, *weights)
        graphs = self._graph_cache(x, per_step=True)
        if graphs is None:
            grads = run(*tensors)
        else:
            from ..triton_kernels.graphs import tensor_key

            key = ("backward", cell, reverse, _sizes_key(batch_sizes), tensor_key(tensors))
            grads = graphs.run(key, run, tensors)
        return BackwardResult(grads[0], grads[1], grads[2], LayerWeights(*grads[3:]))


def _sizes_key(batch_sizes):
    return None if batch_sizes is None else tuple(batch_sizes.tolist())
