"""Deliberately wrong backends, to show that the check and the benchmark catch a backend that disagrees.

Each wraps the reference backend and spoils one thing by a relative 1e-4: ten
times the float32 tolerance, far below anything visible by eye.  Register one
with ``fusedrnn.backends.register("wrong-output", "wrong_backend:WrongOutputBackend")``
(or ``--register wrong-output=wrong_backend:WrongOutputBackend`` on the command
line) with this directory on the import path.
"""

from fusedrnn.backends.base import ForwardResult, LayerWeights
from fusedrnn.backends.reference import ReferenceBackend

#: relative size of the error each backend introduces
ERROR = 1e-4


class WrongOutputBackend(ReferenceBackend):
    """Right gradients, outputs scaled by 1 + 1e-4."""

    name = "wrong-output"

    def forward(self, cell, x, h0, c0, weights, batch_sizes, reverse, **options):
        res = super().forward(cell, x, h0, c0, weights, batch_sizes, reverse, **options)
        return ForwardResult(res.out * (1 + ERROR), res.h_n, res.c_n, res.workspace)


class WrongGradientBackend(ReferenceBackend):
    """Right outputs, the gradient of ``w_hh`` scaled by 1 + 1e-4."""

    name = "wrong-gradient"

    def backward(self, cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out, workspace,
                 **options):
        res = super().backward(cell, grad_out, grad_hn, grad_cn, x, h0, c0, weights, batch_sizes, reverse, out,
                               workspace, **options)
        dw = res.dweights
        return res._replace(dweights=LayerWeights(dw.w_ih, dw.w_hh * (1 + ERROR), *dw[2:]))


class CrashingBackend(ReferenceBackend):
    """Raises in the forward: a backend that cannot run must fail the check, not crash it."""

    name = "crashing"

    def forward(self, cell, x, h0, c0, weights, batch_sizes, reverse, **options):
        raise RuntimeError("this backend always fails")
