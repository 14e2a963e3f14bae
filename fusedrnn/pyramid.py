"""Pyramid recurrent stacks (Listen, Attend and Spell; Chan, Jaitly, Le and Vinyals, ICASSP 2016).

A pyramid stack is a deep, by default bidirectional, recurrent encoder whose
levels after the first run over fewer time steps: level ``k > 0`` sees
``reduction`` consecutive outputs of level ``k - 1`` concatenated along the
features, so it runs ``T / reduction`` steps of width ``reduction * D``::

    level 0:   x            [T, B, I]                    -> y0 [T, B, D]
    level 1:   y0 grouped   [T // r, B, r * D]           -> y1 [T // r, B, D]
    level k:   ...          [T // r**k, B, r * D]        -> yk [T // r**k, B, D]

with ``D = hidden_size * num_directions``.  Within a group the features of the
earlier step come first (``[y_{2t}, y_{2t+1}]`` for ``r = 2``).  Each level is
a one-layer :class:`fusedrnn.LSTM` / :class:`fusedrnn.GRU`, so every level is
one fused op call per direction, and the recurrence of a stack of L levels
costs ``T (1 + 1/r + ... + 1/r**(L-1))`` steps instead of ``L T``.

Odd lengths: the trailing ``len % r`` steps of a sequence that do not fill a
group are **dropped** (never padded) where the groups are formed, at every
level (the level below has still run over them: its reverse direction starts
at the sequence's true last step), so a sequence of length
``n`` leaves the stack with ``n // r**(L-1)`` steps (floor at each level, which
is the same thing).  Padded input with ``lengths`` and the same batch as a
``PackedSequence`` give the same result, and padded input without lengths is
the case where every sequence has the full length ``T``.  A sequence must keep
at least one step at the top: ``n >= r**(L-1)``, else ValueError.

Parameters are named ``layers.{k}.weight_ih_l0[_reverse]`` etc.: level ``k``'s
torch.nn-layout weights, so ``layers[k].state_dict()`` loads into a one-layer
``torch.nn.LSTM``/``GRU`` with the same settings.

Example::

    >>> enc = PyramidLSTM(40, 256, num_layers=3, batch_first=True)   # 8x fewer steps at the top
    >>> out, lengths, h_n = enc(features, lengths)                    # out [B, T // 4, 512]
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .modules import GRU, LSTM, FusedRNNBase

__all__ = ["PyramidOutput", "PyramidLSTM", "PyramidGRU", "group_steps"]


class PyramidOutput(NamedTuple):
    """What a pyramid stack returns.

    ``output``: the top level's outputs, a tensor ``[T', B, D]`` (``[B, T', D]`` with
    ``batch_first``; zeros past each sequence's reduced length) or a ``PackedSequence``
    when the input was one (same ``sorted_indices``); ``lengths``: the reduced lengths,
    int64 on the CPU, in the caller's batch order; ``h_n``: the top level's final state
    as its torch.nn twin returns it (``[num_directions, B, H]``, a pair ``(h_n, c_n)`` for LSTM).
    """

    output: Union[Tensor, PackedSequence]
    lengths: Tensor
    h_n: Union[Tensor, tuple]


def group_steps(y: Tensor, reduction: int) -> Tensor:
    """``[T, B, D] -> [T // r, B, r * D]``: each ``r`` consecutive steps side by side, earliest first.

    The trailing ``T % r`` steps are dropped (see the module's note on odd lengths).
    """
    steps, batch, width = y.shape
    kept = steps // reduction
    grouped = y[: kept * reduction].reshape(kept, reduction, batch, width)
    return grouped.transpose(1, 2).reshape(kept, batch, reduction * width)


def _as_lengths(lengths, batch: int, steps: int) -> Tensor:
    """``lengths`` (list or tensor) as a 1-D int64 CPU tensor, checked against the input."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor or list, got shape {tuple(lengths.shape)}, "
                         f"dtype {lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64)
    if lengths.numel() != batch:
        raise ValueError(f"lengths has {lengths.numel()} entries but the input holds {batch} sequences")
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(f"lengths must lie in [1, {steps}] (the input's time steps), got {lengths.tolist()}")
    return lengths


class _PyramidBase(nn.Module):
    """A stack of one-layer fusedrnn modules with ``group_steps`` between them."""

    _level_class = FusedRNNBase

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 3, reduction: int = 2,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = True,
                 device=None, dtype=None, *, backend: str = "auto", level_options: Optional[dict] = None) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        # torch.nn's check and message for dropout (the levels themselves have no dropout of their own)
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.reduction = reduction
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        width = hidden_size * (2 if bidirectional else 1)
        self.layers = nn.ModuleList(
            self._level_class(
                input_size if k == 0 else reduction * width, hidden_size, 1, bias, False, 0.0, bidirectional,
                device=device, dtype=dtype, backend=backend, **(level_options or {}),
            )
            for k in range(num_layers)
        )

    @property
    def total_reduction(self) -> int:
        """How many input steps make one output step."""
        return self.reduction ** (self.num_layers - 1)

    def reduced_lengths(self, lengths) -> Tensor:
        """Output lengths for input ``lengths``: floor division by ``reduction`` at each level."""
        return torch.as_tensor(lengths, dtype=torch.int64) // self.total_reduction

    def extra_repr(self) -> str:
        s = f"reduction={self.reduction}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    def forward(self, input: Union[Tensor, PackedSequence], lengths: Optional[Union[Tensor, Sequence[int]]] = None
                ) -> PyramidOutput:
        """Run the stack over a padded batch (optionally with ``lengths``) or a ``PackedSequence``."""
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths must be None for a PackedSequence input (it carries its own)")
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            x, lengths = pad_packed_sequence(input)  # time-major, caller's batch order
        else:
            if not isinstance(input, Tensor) or input.dim() != 3:
                got = f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__
                raise ValueError(f"{type(self).__name__}: input must be a 3-D tensor or a PackedSequence, got {got}")
            x = input.transpose(0, 1) if self.batch_first else input
            if lengths is not None:
                lengths = _as_lengths(lengths, x.size(1), x.size(0))
        if x.size(0) < self.total_reduction or (lengths is not None and int(lengths.min()) < self.total_reduction):
            shortest = x.size(0) if lengths is None else int(lengths.min())
            raise ValueError(
                f"a sequence of {shortest} steps is too short for {self.num_layers} levels of reduction "
                f"{self.reduction}: each needs at least {self.total_reduction} steps"
            )

        for k, level in enumerate(self.layers):
            if k > 0:
                if self.training and self.dropout > 0:
                    x = F.dropout(x, self.dropout, training=True)  # as torch.nn: after all but the last level
                x = group_steps(x, self.reduction)
                lengths = None if lengths is None else lengths // self.reduction
            x, h_n = self._run_level(level, x, lengths)

        out_lengths = lengths if lengths is not None else torch.full((x.size(1),), x.size(0), dtype=torch.int64)
        if packed:
            # reduced lengths keep the input's order, so its sorting stays valid
            sorted_x = x.index_select(1, sorted_indices) if sorted_indices is not None else x
            sorted_lengths = out_lengths[sorted_indices.cpu()] if sorted_indices is not None else out_lengths
            data, batch_sizes, _, _ = pack_padded_sequence(sorted_x, sorted_lengths, enforce_sorted=True)
            return PyramidOutput(PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices), out_lengths, h_n)
        return PyramidOutput(x.transpose(0, 1) if self.batch_first else x, out_lengths, h_n)

    @staticmethod
    def _run_level(level: FusedRNNBase, x: Tensor, lengths: Optional[Tensor]):
        """One level over padded ``x`` [T, B, F]; with lengths, each sequence stops (and the reverse
        direction starts) at its own last step, and the steps past it come back as zeros."""
        if lengths is None:
            return level(x)
        packed, h_n = level(pack_padded_sequence(x, lengths, enforce_sorted=False))
        out, _ = pad_packed_sequence(packed, total_length=x.size(0))
        return out, h_n


class PyramidLSTM(_PyramidBase):
    """Pyramid stack of bidirectional :class:`fusedrnn.LSTM` levels (Listen, Attend and Spell's listener).

    ``PyramidLSTM(input_size, hidden_size, num_layers=3, reduction=2, bias=True, batch_first=False,
    dropout=0.0, bidirectional=True, device=None, dtype=None, *, backend="auto", peephole=False)``

    ``forward(input, lengths=None) -> PyramidOutput(output, lengths, h_n)``; ``input`` is a padded
    tensor (``lengths`` optional) or a ``PackedSequence``.  ``num_layers`` levels, the output has
    ``T // reduction**(num_layers-1)`` steps; trailing steps that do not fill a group are dropped
    (module docstring).  ``dropout`` applies to each level's output but the last, in training, as torch.nn.
    """

    _level_class = LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 3, reduction: int = 2,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = True,
                 device=None, dtype=None, *, backend: str = "auto", peephole: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, reduction, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, level_options=dict(peephole=peephole))


class PyramidGRU(_PyramidBase):
    """Pyramid stack of bidirectional :class:`fusedrnn.GRU` levels; arguments as :class:`PyramidLSTM`
    (``reset_after`` in place of ``peephole``); ``h_n`` is a tensor."""

    _level_class = GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 3, reduction: int = 2,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = True,
                 device=None, dtype=None, *, backend: str = "auto", reset_after: bool = True) -> None:
        super().__init__(input_size, hidden_size, num_layers, reduction, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, level_options=dict(reset_after=reset_after))
