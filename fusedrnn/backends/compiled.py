"""What the two compiled backends share: the ops of ``fusedrnn._C``.

The ``cpu`` and ``cuda`` backends call the same four dispatcher ops, one
schema for every device (csrc/include/fusedrnn/op_schema.h): ``forward``,
``backward``, ``forward_strategy`` and ``backward_strategy``; the dispatcher
picks the device's implementation from the tensors (csrc/cpu/ops.cpp,
csrc/cuda/ops.cpp).  A subclass says where its ops live (:meth:`ops`: the
CUDA emulation has its own namespace) and which strategy to ask for.
"""

from __future__ import annotations

import torch

from ..cells import CellSpec
from .base import Backend, BackwardResult, ForwardResult, LayerWeights


def _extra(weights: LayerWeights, zoneout_mask=None) -> dict:
    """The kernel ops' ``w_extra`` and ``zoneout_mask`` arguments, only where there is one (the ops of the CUDA
    emulation, built separately, may predate them)."""
    extra = {} if weights.w_extra is None else {"w_extra": weights.w_extra}
    if zoneout_mask is not None:
        extra["zoneout_mask"] = zoneout_mask
    return extra


class CompiledBackend(Backend):
    """A backend whose kernels are the dispatcher ops of op_schema.h."""

    def ops(self):
        """The ``torch.ops`` namespace holding the ops."""
        return torch.ops.fusedrnn_C

    def forward(self, cell, x, h0, c0, weights: LayerWeights, batch_sizes, reverse, for_backward=True,
                zoneout_mask=None) -> ForwardResult:
        # the kernel ops take six weights (w_ih .. w_proj) in place, and w_extra (a cell with extra weights)
        # and zoneout_mask by name, last
        out, h_n, c_n, workspace = self.ops().forward(
            cell.family, cell.mode, x, h0, c0, *weights[:6], batch_sizes, bool(reverse),
            self.strategy_for(cell, x, backward=False), for_backward=bool(for_backward),
            **_extra(weights, zoneout_mask),
        )
        return ForwardResult(out, h_n, c_n if cell.has_cell_state else None, workspace)

    def backward(self, cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights: LayerWeights, batch_sizes, reverse,
                 out, workspace, need_dx=True, need_dweights=True, zoneout_mask=None) -> BackwardResult:
        grads = self.ops().backward(
            cell.family, cell.mode, grad_out, grad_hn, grad_cn, x, h0, c0, *weights[:6], batch_sizes, bool(reverse),
            out, workspace, self.strategy_for(cell, x, backward=True), need_dx=bool(need_dx),
            need_dweights=bool(need_dweights), **_extra(weights, zoneout_mask),
        )
        return BackwardResult.from_op(cell, grads, weights)

    def chosen_forward_strategy(self, cell: CellSpec, x: torch.Tensor, h0: torch.Tensor, weights: LayerWeights,
                                steps: int) -> str:
        """What ``"auto"`` runs for these sizes: the strategy's name, then ``": <why>"`` where it is not the
        device's fastest one (``"per_step: ..."`` on CUDA, ``"gemm: ..."`` on the CPU)."""
        return self.ops().forward_strategy(cell.family, cell.mode, x, h0, weights.w_hh, weights.w_proj, steps)

    def chosen_backward_strategy(self, cell: CellSpec, x: torch.Tensor, h0: torch.Tensor, weights: LayerWeights,
                                 steps: int) -> str:
        """The same for the backward."""
        return self.ops().backward_strategy(cell.family, cell.mode, x, h0, weights.w_hh, weights.w_proj, steps)

