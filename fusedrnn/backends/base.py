"""The contract every backend implements: one layer-direction, whole sequence.

The ops layer (:mod:`fusedrnn.ops`) calls a backend with tensors that are
already checked and contiguous; a backend only computes.

Shapes (``Hout`` is ``P`` with a projection, else ``H``; ``G`` is
``cell.gates``; ``W`` is ``cell.workspace_blocks * H``):

========================  ==========================================================
``x``                     ``[T, B, I]`` (padded; ``batch_sizes`` is None) or
                          ``[N, I]`` packed rows with ``batch_sizes`` (int64, CPU,
                          ``[T]``, non-increasing, ``batch_sizes[0] == B``,
                          ``sum == N``): step t owns the next ``batch_sizes[t]`` rows
``h0``                    ``[B, Hout]``
``c0``                    ``[B, C*H]`` for a cell with a cell state (LSTM: C = 1; sLSTM's
                          c, n, m concatenated: C = 3; ``cell.cell_state_blocks``), else None
``weights.w_ih``          ``[G*H, I]``
``weights.w_hh``          ``[G*H, Hout]`` (``cell.recurrent_shape``: IndRNN's ``[G*H]``,
                          sLSTM's heads ``[G*H, H/heads]``)
``weights.b_ih/b_hh``     ``[G*H]`` or None (``bias=False``)
``weights.w_peep``        ``[3*H]`` (LSTM peepholes i, f, o) or None
``weights.w_proj``        ``[P, H]`` (LSTM ``proj_size``) or None
``out``                   ``x.shape[:-1] + (Hout,)``: the hidden state of each row
``h_n``, ``c_n``          ``[B, Hout]``, ``c0``'s shape (None for GRU/RNN): each
                          sequence's state after its own last step
``workspace``             ``x.shape[:-1] + (W,)``, layout in :mod:`fusedrnn.cells`
========================  ==========================================================

``reverse=True`` runs the steps from last to first (the backward direction of
a bidirectional layer); rows and outputs keep their time positions.  With
packed rows, a sequence that is shorter starts from its ``h0`` row at its own
last step.

Dtypes: inputs share one floating dtype; float16/bfloat16 backends accumulate
in float32.
"""

from __future__ import annotations

from typing import FrozenSet, Optional, Tuple

import torch

from ..cells import BUILT_IN_CELLS, CellSpec
from ..layer import BackwardResult, ForwardResult, LayerWeights  # noqa: F401  (the contract's types)


class Backend:
    """Base class: a named implementation of the sequence forward and backward."""

    #: the name users pass as ``backend=``
    name: str = ""
    #: the cells ((family, mode) keys of :data:`fusedrnn.cells.CELLS`) this backend has kernels for;
    #: None: every cell of the table (the reference backend)
    cells: Optional[FrozenSet[Tuple[str, str]]] = BUILT_IN_CELLS
    #: whether :meth:`forward`'s outputs never share memory with its inputs (each a new buffer, or a view of
    #: one), so that the callers need not look (:func:`fusedrnn.ops._run_forward`); False: they check
    fresh_outputs: bool = False

    def runs(self, cell: CellSpec) -> bool:
        """Whether this backend has kernels for ``cell`` (a cell can land on the reference backend first)."""
        return self.cells is None or (cell.family, cell.mode) in self.cells

    def availability(self) -> Optional[str]:
        """None when usable on this machine, else the reason it is not."""
        return None

    def note(self) -> Optional[str]:
        """What :func:`fusedrnn.report` adds after "available" (None: nothing), e.g. that it is an emulation."""
        return None

    def unsupported(self, cell: CellSpec, x: torch.Tensor, weights: LayerWeights) -> Optional[str]:
        """None when this backend can run these tensors, else why not (device, dtype, option)."""
        return None

    def strategy_for(self, cell: CellSpec, x: torch.Tensor, backward: bool) -> str:
        """The ``strategy`` argument of the ops for a forward (``backward`` False) or backward call: one of the
        backend's strategies, or ``"auto"`` (the backend chooses; the only one for a backend without any)."""
        return "auto"

    def step_op(self, cell: CellSpec, x: torch.Tensor):
        """The backend's single-step op for a cell step on tensors like ``x`` (the schema of ``step`` in
        csrc/include/fusedrnn/op_schema.h: differentiable, its autograd formula in C++), or None where a step
        runs as a sequence of one step (:meth:`forward`).  The cell modules call it (fusedrnn/cell_modules.py)."""
        return None

    def forward(
        self,
        cell: CellSpec,
        x: torch.Tensor,
        h0: torch.Tensor,
        c0: Optional[torch.Tensor],
        weights: LayerWeights,
        batch_sizes: Optional[torch.Tensor],
        reverse: bool,
        for_backward: bool = True,
    ) -> ForwardResult:
        """One layer-direction over the sequence.

        ``for_backward`` False says no backward will follow (inference): a
        backend may then skip writing the workspace and return an empty one.
        """
        raise NotImplementedError

    def backward(
        self,
        cell: CellSpec,
        grad_out: torch.Tensor,
        grad_hn: torch.Tensor,
        grad_cn: Optional[torch.Tensor],
        x: torch.Tensor,
        h0: torch.Tensor,
        c0: Optional[torch.Tensor],
        weights: LayerWeights,
        batch_sizes: Optional[torch.Tensor],
        reverse: bool,
        out: torch.Tensor,
        workspace: torch.Tensor,
        need_dx: bool = True,
        need_dweights: bool = True,
    ) -> BackwardResult:
        """Gradients given the forward's inputs and outputs.

        ``grad_out``, ``grad_hn`` (and ``grad_cn`` for LSTM) are always
        materialised tensors (zeros where the loss does not depend on them).
        ``need_dx`` / ``need_dweights`` False say that nobody wants the input's
        gradient (a first layer fed data) or the weights' (frozen weights): a
        backend may skip those products (their results are dropped anyway).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<fusedrnn backend {self.name!r}>"
