"""The ``cuda`` backend: CUDA C++ kernels from ``fusedrnn._C`` (csrc/cuda).

Built into the extension only where the installed torch has CUDA and a CUDA
toolkit is present (setup.py).  The kernels are the dispatcher ops
``torch.ops.fusedrnn_C.forward`` / ``backward`` for CUDA tensors (the schema
every device shares: csrc/include/fusedrnn/op_schema.h; the calls:
:mod:`fusedrnn.backends.compiled`), one call per layer-direction and sequence.

The forward and the backward each run one of two strategies, for every cell
(csrc/cuda/README.md has the rule): ``persistent`` (one cooperative kernel for
the whole sequence, each block keeping its slice of W_hh in shared memory) or
``per_step`` (a cuBLAS product and one fused pointwise kernel per step).
``forward_strategy`` and ``backward_strategy`` (or the ``FUSEDRNN_CUDA_FORWARD``
and ``FUSEDRNN_CUDA_BACKWARD`` environment variables) force one.  After the
backward's recurrence, the weight gradients are single GEMMs.  float16/bfloat16
are computed in float32 inside (tensor cores with float32 accumulation in the
persistent kernels).

Emulation.  With ``FUSEDRNN_CUDA_EMULATE=1`` the backend runs the same
kernels on **CPU tensors** through the CUDA emulation build
``fusedrnn._cuda_emulation`` (built where torch has no CUDA; csrc/cuda/README.md,
"Emulation"): every CUDA thread a fiber, barriers and warp collectives as on a
GPU, so the kernels can be tested and debugged without one.  It is for
testing, not speed; its ops are ``torch.ops.fusedrnn_cuda_emulation.*`` (the
CPU key of ``fusedrnn_C`` belongs to the CPU kernels); ``"auto"`` never picks it (it is not in
``AUTO_PREFERENCE["cpu"]``), and :func:`fusedrnn.report` says it is the
emulation.  ``FUSEDRNN_CUDA_EMULATION_LIBRARY`` loads another build of that
module (the sanitizer builds of ``make emu-asan`` / ``make emu-tsan``).  The
variables are read at each call, so tests can switch them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional

import torch

from .. import _extension
from ..cells import BUILT_IN_CELLS, INDRNN_CELLS, CellSpec
from .base import LayerWeights
from .compiled import CompiledBackend

#: dtypes the kernels take
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: values of ``forward_strategy`` and ``backward_strategy``
STRATEGIES = ("auto", "per_step", "persistent")


#: the emulation module's name; FUSEDRNN_CUDA_EMULATION_LIBRARY may name another file of it
EMULATION_MODULE = "fusedrnn._cuda_emulation"


def emulated() -> bool:
    """True under ``FUSEDRNN_CUDA_EMULATE=1``: the kernels run on CPU tensors through the CUDA emulation."""
    return os.environ.get("FUSEDRNN_CUDA_EMULATE", "0") == "1"


_emulation = {"loaded": False, "module": None, "error": None}


def load_emulation():
    """The emulation module (registering the ops for CPU tensors), loaded once; None if it cannot be."""
    if not _emulation["loaded"]:
        _emulation["loaded"] = True
        path = os.environ.get("FUSEDRNN_CUDA_EMULATION_LIBRARY")
        try:
            if _extension.has_cuda():
                raise ImportError("fusedrnn._C has the real CUDA kernels; the emulation is built only where torch "
                                  "has no CUDA")
            if path:
                spec = importlib.util.spec_from_file_location(EMULATION_MODULE, path)
                if spec is None:
                    raise ImportError(f"FUSEDRNN_CUDA_EMULATION_LIBRARY={path!r} is not a Python extension module")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[EMULATION_MODULE] = module
            else:
                module = importlib.import_module(EMULATION_MODULE)
            _emulation["module"] = module
        except Exception as exc:  # ImportError, or an OSError from a bad shared library
            _emulation["error"] = (
                f"FUSEDRNN_CUDA_EMULATE=1 but the CUDA emulation {path or EMULATION_MODULE} could not be loaded "
                f"({type(exc).__name__}: {exc}); it is built by `pip install --no-build-isolation -e .` where torch "
                "has no CUDA (unless FUSEDRNN_NO_EMULATION=1)"
            )
    return _emulation["module"]


def emulation_description() -> str:
    """What the emulated backend is, for reports (the emulation module must be loaded)."""
    module = load_emulation()
    sanitizer = module.sanitizer() if module is not None else ""
    return ("CPU emulation of the CUDA kernels (FUSEDRNN_CUDA_EMULATE=1), CPU tensors, for testing, not speed"
            + (f"; built with the {sanitizer} sanitizer" if sanitizer else ""))


def _strategy_from_environment(variable: str) -> str:
    value = os.environ.get(variable, "auto")
    if value not in STRATEGIES:
        raise ValueError(f"{variable} must be one of {STRATEGIES}, got {value!r}")
    return value


class CudaBackend(CompiledBackend):
    name = "cuda"
    #: the built-in cells, and IndRNN (one launch per sequence: csrc/cuda/diagonal.cu)
    cells = BUILT_IN_CELLS | INDRNN_CELLS
    #: no zoneout kernels yet (the op refuses a zoneout_mask): "auto" takes the reference for zoneout
    zoneout_cells = frozenset()

    def __init__(self):
        self.forward_strategy = _strategy_from_environment("FUSEDRNN_CUDA_FORWARD")
        self.backward_strategy = _strategy_from_environment("FUSEDRNN_CUDA_BACKWARD")

    def availability(self) -> Optional[str]:
        if emulated():
            return _emulation["error"] if load_emulation() is None else None
        if _extension.load() is None:
            return _extension.load_error()
        if not _extension.has_cuda():
            return (
                "fusedrnn._C was built without its CUDA kernels (the installed torch has no CUDA, no CUDA "
                "toolkit was found, or FUSEDRNN_NO_CUDA=1); rebuild with `pip install --no-build-isolation -e .` "
                "where torch has CUDA (or set FUSEDRNN_CUDA_EMULATE=1 to run them on CPU tensors through the CUDA "
                "emulation)"
            )
        if not torch.cuda.is_available():
            return "no CUDA GPU: torch.cuda.is_available() is False"
        return None

    def note(self) -> Optional[str]:
        return emulation_description() if emulated() else None

    def unsupported(self, cell: CellSpec, x: torch.Tensor, weights: LayerWeights) -> Optional[str]:
        if emulated():
            if x.device.type != "cpu":
                return f"the cuda backend under FUSEDRNN_CUDA_EMULATE=1 runs CPU tensors only, got {x.device}"
        elif x.device.type != "cuda":
            return f"the cuda backend runs CUDA tensors only, got {x.device}"
        if x.dtype == torch.float64:
            return "the cuda backend computes in float32 and takes float32, float16 and bfloat16, not float64 " \
                   "(the 'reference' backend runs float64)"
        if x.dtype not in SUPPORTED_DTYPES:
            return f"the cuda backend supports {[str(d) for d in SUPPORTED_DTYPES]}, got {x.dtype}"
        return None

    def ops(self):
        return torch.ops.fusedrnn_cuda_emulation if emulated() else torch.ops.fusedrnn_C

    def strategy_for(self, cell: CellSpec, x: torch.Tensor, backward: bool) -> str:
        return self.backward_strategy if backward else self.forward_strategy
