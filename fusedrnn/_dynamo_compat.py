"""torch.compile for fusedrnn's LSTM, GRU and RNN, which subclass torch.nn's.

torch._dynamo refuses any instance of ``torch.nn.RNN``, ``GRU`` or ``LSTM``
(a graph break, an error under ``fullgraph=True``) unless
``torch._dynamo.config.allow_rnn`` is set: torch's forward calls _VF/cuDNN ops
that Dynamo does not trace well.  fusedrnn's classes are instances of those
(so that client code's ``isinstance`` checks hold), but their forward is
plain PyTorch and fusedrnn's custom ops, which Dynamo traces.  Setting
``allow_rnn`` globally would change how torch.nn's own RNNs compile in the
user's program, so this module narrows it: ``VariableBuilder.wrap_module``,
the one place in Dynamo that reads ``allow_rnn``, is wrapped so that
``allow_rnn`` reads True during the call for instances of fusedrnn's classes
only (``torch._dynamo.config.patch``, restored on return).  There is no public
per-class switch (torch 2.13).

Installed lazily: importing torch._dynamo when fusedrnn is imported would take
seconds and import Triton.  :func:`install` patches at once if
``torch._dynamo.variables.builder`` is already imported, and otherwise puts a
one-shot finder on ``sys.meta_path`` that patches that module right after it
is executed.  If Dynamo's internals are not as expected, it warns once and
changes nothing: fusedrnn's modules then graph-break as torch.nn's do.
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
import warnings

__all__ = ["install"]

_BUILDER = "torch._dynamo.variables.builder"
_CONFIG = "torch._dynamo.config"
# set on the wrapper, so that patching twice (install after a reload, say) wraps once
_MARKER = "_fusedrnn_allows_fused_rnns"


def _fused_classes() -> tuple:
    from .modules import FusedRNNBase  # not at import: fusedrnn.modules imports this module

    return (FusedRNNBase,)


def _patch(builder) -> bool:
    """Wrap ``builder.VariableBuilder.wrap_module``; False (and a warning) if Dynamo has changed."""
    config = sys.modules.get(_CONFIG)
    variable_builder = getattr(builder, "VariableBuilder", None)
    original = getattr(variable_builder, "wrap_module", None)
    if config is None or not hasattr(config, "allow_rnn") or not hasattr(config, "patch") or not callable(original):
        warnings.warn(
            "fusedrnn: torch._dynamo has no VariableBuilder.wrap_module / config.allow_rnn as expected; "
            "torch.compile will graph-break at fusedrnn's LSTM/GRU/RNN as at torch.nn's "
            "(set torch._dynamo.config.allow_rnn = True to trace them)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if getattr(original, _MARKER, False):
        return True

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, _fused_classes()) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    setattr(wrap_module, _MARKER, True)
    variable_builder.wrap_module = wrap_module
    return True


class _PatchBuilderOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when the builder module is looked up, it asks the other finders for
    its spec and makes that spec's loader patch the module right after executing it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _BUILDER:
            return None
        sys.meta_path.remove(self)  # one shot; the loop below must not find this finder again
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        # on this module's own loader instance (the path finder makes one per module): the
        # module keeps its real loader, for inspect, linecache and Dynamo's file rules
        def exec_then_patch(module):
            exec_module(module)
            if module.__name__ == _BUILDER:
                _patch(module)

        loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    """Patch Dynamo now if its builder is imported, else when it is (idempotent)."""
    builder = sys.modules.get(_BUILDER)
    if builder is not None:
        _patch(builder)
    elif not any(isinstance(finder, _PatchBuilderOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchBuilderOnImport())
