"""CUDA-graph capture of a whole per-step recurrence, so that small shapes are not launch-bound.

A sequence run with the per-step kernels is T (or 2T) launches of a few
microseconds of work each; replaying them as one captured CUDA graph removes
the launch overhead.  :class:`GraphCache` captures ``fn(*tensors)`` once per
key (everything that changes the launches: shapes, dtypes, packed batch
sizes, direction, cell) into static buffers, and on every later call copies
the new inputs in, replays, and returns copies of the outputs.

GPU only (``torch.cuda.CUDAGraph``); the gpu-marked tests compare replayed
results with direct runs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch


def tensor_key(tensors: Sequence[Optional[torch.Tensor]]) -> Tuple:
    """What of the inputs a captured graph depends on: shape, dtype and device of each."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


class GraphCache:
    """Captured graphs by key, least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._entries: "OrderedDict[Hashable, tuple]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def run(self, key: Hashable, fn: Callable, tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
        """``fn(*tensors)`` (a tuple of tensors or None), replayed from a graph captured for ``key``."""
        if torch.cuda.is_current_stream_capturing():
            return tuple(fn(*tensors))  # the caller is capturing us already: just record the launches
        entry = self._entries.get(key)
        if entry is None:
            entry = self._capture(fn, tensors)
            self._entries[key] = entry
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        static_inputs, graph, static_outputs = entry
        for static, t in zip(static_inputs, tensors):
            if static is not None:
                static.copy_(t)
        graph.replay()
        return tuple(None if t is None else t.clone() for t in static_outputs)

    @staticmethod
    def _capture(fn: Callable, tensors):
        static_inputs = [None if t is None else t.clone() for t in tensors]
        # warm up on a side stream first: compiles and autotunes the kernels outside the capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = tuple(fn(*static_inputs))
        return static_inputs, graph, static_outputs
