"""Loading the compiled extension ``fusedrnn._C``, once, remembering why it failed.

Nothing here warns: the backend registry says which backend it fell back to,
and why, the first time the choice matters.
"""

from __future__ import annotations

import importlib
from typing import Optional

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
    module = load()
    return bool(module is not None and getattr(module, "built_with_cuda", lambda: False)())
