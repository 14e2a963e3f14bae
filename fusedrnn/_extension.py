"""Loading the compiled extension ``fusedrnn._C``, once, remembering why it failed.

Nothing here warns: the backend registry says which backend it fell back to,
and why, the first time the choice matters.

The module ``fusedrnn._C`` holds nothing itself: importing it loads the
library, which registers the ops (``torch.ops.fusedrnn_C.*``, the kernels,
and ``torch.ops.fusedrnn.*``, the graph ops; csrc/fusedrnn.cpp).  It is
loaded when fusedrnn is imported (:mod:`fusedrnn.ops` asks), because the
graph ops must exist before a saved program that names them is loaded.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

_state = {"loaded": False, "module": None, "error": None}


def load():
    """The ``fusedrnn._C`` module, or None if it cannot be imported."""
    if not _state["loaded"]:
        _state["loaded"] = True
        try:
            _state["module"] = importlib.import_module("fusedrnn._C")
        except Exception as exc:  # ImportError, or an OSError from a bad shared library
            _state["error"] = (
                f"the C++ extension fusedrnn._C could not be loaded ({type(exc).__name__}: {exc}); "
                "build it with `pip install --no-build-isolation -e .` (see README)"
            )
    return _state["module"]


def load_error() -> Optional[str]:
    """Why :func:`load` returned None (None if it did not)."""
    load()
    return _state["error"]


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return load() is not None and bool(torch.ops.fusedrnn_C.built_with_cuda())
