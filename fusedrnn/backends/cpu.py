"""The ``cpu`` backend: fused C++ kernels from ``fusedrnn._C`` (csrc/cpu)."""

from __future__ import annotations

from .. import _extension
from .base import Backend


class CpuBackend(Backend):
    name = "cpu"

    def availability(self):
        if _extension.load() is None:
            return _extension.load_error()
        return "the fused CPU kernels are not part of this build yet"
