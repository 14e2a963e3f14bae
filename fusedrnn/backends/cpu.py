"""The ``cpu`` backend: fused C++ kernels from ``fusedrnn._C`` (csrc/cpu).

The kernels are the dispatcher ops ``torch.ops.fusedrnn_C.forward`` /
``backward`` for CPU tensors (one call per layer-direction and sequence; the
schema every device shares: csrc/include/fusedrnn/op_schema.h; the calls:
:mod:`fusedrnn.backends.compiled`).  Per step they run one recurrent product and one fused, vectorised,
parallel pointwise pass.  For float32 LSTM, GRU (reset_after) and RNN the
product is a cache-resident micro-kernel over packed ``W_hh``
(csrc/cpu/recurrent_product.h) with the gate pass right behind it; the other
cells and dtypes run a per-step ATen GEMM.  The weights are packed in every
call, never kept from one call to the next: writes that a tensor's version
counter does not see (through ``.data`` or ``.numpy()``, from another process
sharing the memory) must never leave a stale copy (tests/test_weight_writes.py).  The products over all steps
(input projection, dX) go through oneDNN where torch has it
(csrc/cpu/dense_product.h).  float16/bfloat16 are computed in float32 inside.
A no-grad forward keeps no workspace; the backward skips dX and the weight
products nobody asked for.

Besides the built-in cells it runs IndRNN (:data:`fusedrnn.cells.INDRNN_CELLS`), whose
element-wise recurrence has no product per step: one GEMM for the input projection, then
every thread takes its units through the whole sequence (csrc/cpu/diagonal_recurrence.h);
the layer-normalised LSTM and GRU (:data:`fusedrnn.cells.LAYER_NORM_CELLS`), whose rows are
normalised over all their units: the gemm strategy with whole rows per thread
(csrc/cpu/layer_norm_recurrence.h); and sLSTM (:data:`fusedrnn.cells.SLSTM_CELLS`), whose recurrent
weight is block-diagonal by heads: one region for the sequence, each thread owning panels of units of
a head, their product by heads fused with the stabilised exponential gating
(csrc/cpu/slstm_recurrence.h).  The strategies below do not apply to these.

Zoneout (:mod:`fusedrnn.zoneout`) runs in the kernels of every cell above but sLSTM (the built-in ones in
both strategies): a pass after each step's update blends the output rows with the previous state, and the
backward splits each output row's gradient between the cell and the previous state.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _extension
from ..cells import BUILT_IN_CELLS, INDRNN_CELLS, LAYER_NORM_CELLS, SLSTM_CELLS
from .compiled import CompiledBackend

#: dtypes the kernels take (16-bit ones are computed in float32)
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuBackend(CompiledBackend):
    name = "cpu"
    #: the built-in cells, IndRNN, the layer-normalised cells and sLSTM (the cuda backend has only IndRNN of these)
    cells = BUILT_IN_CELLS | INDRNN_CELLS | LAYER_NORM_CELLS | SLSTM_CELLS
    #: csrc/cpu/sequence.cpp hands back new buffers (h0's clone for a sequence without steps), never an input;
    #: tests/test_cpu_backend.py checks it
    fresh_outputs = True
    #: zoneout in the kernels of every cell above (csrc/include/fusedrnn/cell.h runs_zoneout)
    zoneout_cells = BUILT_IN_CELLS | INDRNN_CELLS | LAYER_NORM_CELLS

    #: how the per-step recurrent product runs: "auto" (chosen by size, see
    #: csrc/cpu/strategy.cpp), "gemm" (MKL per step), "fused" (packed
    #: micro-kernel; float32, every cell) or
    #: "folded" (fused, with the input projection inside the per-step product;
    #: LSTM and RNN).  Tests set it to cover every path.
    strategy: str = "auto"

    #: set once the extension is found: a loaded library stays loaded, and this is asked at every call
    _found = False

    def availability(self) -> Optional[str]:
        if self._found:
            return None
        if _extension.load() is None:
            return _extension.load_error()
        if not hasattr(torch.ops, "fusedrnn_C") or not hasattr(torch.ops.fusedrnn_C, "describe"):
            return "fusedrnn._C was built without the fused CPU kernels (csrc/cpu); rebuild the extension"
        self._found = True
        return None

    def unsupported(self, cell, x, weights) -> Optional[str]:
        if not x.is_cpu:
            return f"the cpu backend runs CPU tensors only, got {x.device}"
        if x.dtype not in SUPPORTED_DTYPES:
            return f"the cpu backend supports {[str(d) for d in SUPPORTED_DTYPES]}, got {x.dtype}"
        return None

    def step_op(self, cell, x):
        """``fusedrnn_C::step`` (csrc/cpu/step.h; its autograd in csrc/step_autograd.cpp) under ``"auto"``: a
        forced strategy is what a test asked the sequence kernels to run, so steps then take them too."""
        if self.strategy != "auto" or cell.record.recurrent != "matrix" or cell.record.extra_weights:
            # step.h's kernels take a matrix W_hh and no w_extra: IndRNN's, sLSTM's and the layer-normalised
            # cells' step runs as a sequence of one step
            return None
        if self._step is None:
            self._step = torch.ops.fusedrnn_C.step.default
        return self._step

    _step = None

    def strategy_for(self, cell, x, backward: bool) -> str:
        """A forced strategy falls back for what it does not cover: "folded" to "fused" (GRU), "fused" to "gemm"."""
        if self.strategy not in ("fused", "folded"):
            return self.strategy
        if x.dtype == torch.float64:
            return "gemm"
        return "fused" if cell.family == "gru" else self.strategy


def kernel_info() -> str:
    """ISA and thread count the kernels use on this machine (for reports).

    Loads the extension itself: ``torch.ops.fusedrnn_C`` exists only once ``fusedrnn._C`` is imported,
    which otherwise first happens when an op is called.
    """
    if _extension.load() is None:
        raise RuntimeError(_extension.load_error())
    return torch.ops.fusedrnn_C.describe()
