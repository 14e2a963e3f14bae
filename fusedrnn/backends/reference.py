"""The ``reference`` backend: :mod:`fusedrnn.reference` behind the backend contract.

Runs on every device and dtype; slow (one small op per gate per step), exact.
"""

from __future__ import annotations

from .. import reference
from .base import Backend


class ReferenceBackend(Backend):
    name = "reference"
    cells = None  # every cell of the table: its reference step is its definition
    zoneout_cells = None  # and with zoneout

    def forward(self, cell, x, h0, c0, weights, batch_sizes, reverse, for_backward=True, zoneout_mask=None):
        return reference.sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse, zoneout_mask=zoneout_mask)

    def backward(self, cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace,
                 need_dx=True, need_dweights=True, zoneout_mask=None):
        return reference.sequence_backward(
            cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace, zoneout_mask
        )
