"""Backend registry and selection.

A backend is chosen, most specific first, by

1. the ``backend=`` argument of a module or function (when not ``"auto"``),
2. the innermost :func:`use_backend` context,
3. the ``FUSEDRNN_BACKEND`` environment variable,
4. ``"auto"``: the first backend of :data:`AUTO_PREFERENCE` for the tensors'
   device that is available and supports the call.  When auto passes over a
   backend it would have preferred, it warns once, naming the backend it fell
   back to and why.

A call with zoneout (a ``zoneout_mask``: :mod:`fusedrnn.zoneout`) also needs a backend that runs the cell
with zoneout (:meth:`Backend.runs_zoneout`): auto passes over the others (with the same warning), and a named
one without it refuses the call.

Backends are imported lazily (only when first asked for), so importing
fusedrnn never needs a compiler, a GPU or Triton.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch.autograd.forward_ad as forward_ad
from torch._C._functorch import TransformType, get_interpreter_stack, peek_interpreter_stack

from ..cells import CellSpec
from .base import Backend, BackwardResult, ForwardResult, LayerWeights

#: backend name -> "module:Class" that implements it
_REGISTRY: Dict[str, str] = {
    "reference": "fusedrnn.backends.reference:ReferenceBackend",
    "cpu": "fusedrnn.backends.cpu:CpuBackend",
    "triton": "fusedrnn.backends.triton:TritonBackend",
    "cuda": "fusedrnn.backends.cuda:CudaBackend",
}

#: what "auto" tries, per device type, fastest first
AUTO_PREFERENCE: Dict[str, List[str]] = {
    "cpu": ["cpu", "reference"],
    # cuda after triton until GPU measurements say otherwise (docs/design.md section 6)
    "cuda": ["triton", "cuda", "reference"],
}
_DEFAULT_PREFERENCE = ["reference"]

def _constant_when_traced(fn):
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does.

    torch.compile then calls it once while tracing and bakes its result into
    the graph, instead of tracing into code it cannot trace (ContextVar,
    importlib, warnings).  The attribute is set directly because the public
    decorator imports torch._dynamo (and with it Triton) when fusedrnn is
    imported.  Consequence: the backend in force when a graph is traced is
    part of it; after changing it, ``torch._dynamo.reset()`` retraces.
    """
    fn._dynamo_marked_constant = True
    return fn


_instances: Dict[str, Backend] = {}
_import_errors: Dict[str, str] = {}
_warned: set = set()
_selected: contextvars.ContextVar = contextvars.ContextVar("fusedrnn_backend", default=None)


def names() -> List[str]:
    """Every backend name fusedrnn knows, available or not."""
    return list(_REGISTRY)


def declared_cells(name: str) -> Optional[FrozenSet[Tuple[str, str]]]:
    """The cells (``(family, mode)`` keys) backend ``name`` has kernels for, available here or not: its
    ``cells`` (:meth:`Backend.runs`); None for every cell of the table (the reference backend), and for a
    backend whose module cannot be imported here, an empty set."""
    if name not in _REGISTRY:
        raise _unknown(name)
    backend = _instance(name)
    return frozenset() if backend is None else backend.cells


def _instance(name: str) -> Optional[Backend]:
    if name in _instances:
        return _instances[name]
    if name in _import_errors:
        return None
    module_name, class_name = _REGISTRY[name].split(":")
    try:
        backend = getattr(importlib.import_module(module_name), class_name)()
    except ImportError as exc:
        _import_errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _instances[name] = backend
    return backend


@_constant_when_traced
def unavailable_reason(name: str) -> Optional[str]:
    """None when backend ``name`` can run on this machine, else why not."""
    backend = _instance(name)
    if backend is None:
        return _import_errors[name]
    return backend.availability()


def available() -> List[str]:
    """The backends usable on this machine."""
    return [n for n in _REGISTRY if unavailable_reason(n) is None]


def report() -> str:
    """One line per backend: available (with the backend's note, e.g. that it is an emulation), or why not."""
    lines = []
    for n in _REGISTRY:
        why = unavailable_reason(n)
        if why is None:
            note = _instance(n).note()
            lines.append(f"{n}: available" + (f" ({note})" if note else ""))
        else:
            lines.append(f"{n}: unavailable: {why}")
    return "\n".join(lines)


def register(name: str, target: str, prefer_for: Optional[List[str]] = None) -> None:
    """Add a backend (``"module:Class"``), e.g. one written outside fusedrnn.

    ``prefer_for`` puts it first in auto's order for those device types.
    """
    _REGISTRY[name] = target
    _instances.pop(name, None)
    _import_errors.pop(name, None)
    for device in prefer_for or []:
        AUTO_PREFERENCE.setdefault(device, list(_DEFAULT_PREFERENCE)).insert(0, name)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown fusedrnn backend {name!r}; expected 'auto' or one of {names()} "
        f"(available here: {available()})"
    )


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the code inside with backend ``name`` unless a call names its own."""
    if name != "auto" and name not in _REGISTRY:
        raise _unknown(name)
    token = _selected.set(name)
    try:
        yield
    finally:
        _selected.reset(token)


_ENV = "FUSEDRNN_BACKEND"
# os.environ's own store, keyed as it keys it (bytes on POSIX), where os.environ is the standard mapping
_ENV_KEY = os.environ.encodekey(_ENV) if isinstance(os.environ, os._Environ) else None


def _environment() -> Optional[str]:
    """``os.environ.get("FUSEDRNN_BACKEND")``, read at every call (so ``os.environ`` writes and pytest's
    ``monkeypatch.setenv`` count at once) from the dict os.environ keeps: the mapping's ``get``
    (encode the key, look it up, decode the value, through Python frames) was the largest part of
    resolving a backend, on every layer call."""
    environ = os.environ
    if _ENV_KEY is None or type(environ) is not os._Environ:  # replaced by something else: ask it
        return environ.get(_ENV)
    value = environ._data.get(_ENV_KEY)
    return None if value is None else environ.decodevalue(value)


@_constant_when_traced
def requested(name: Optional[str] = None) -> str:
    """The backend name in force for a call that asked for ``name``."""
    if name and name != "auto":
        return name
    for candidate in (_selected.get(), _environment()):
        if candidate and candidate != "auto":
            return candidate
    return "auto"


@_constant_when_traced
def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@_constant_when_traced
def _warn_fallback(device_type: str, chosen: str, *passed_over: str) -> None:
    """auto's once-only warning that it took ``chosen`` after passing over backends (``passed_over``: name,
    reason, name, reason...).  Composed here, where Dynamo runs the function itself (it cannot trace
    ``str.join`` nor string concatenation), so that a cell without kernels, which falls back in every
    call, compiles with ``fullgraph=True``; plain strings, since Dynamo passes only constants in."""
    pairs = list(zip(passed_over[::2], passed_over[1::2]))
    _warn_once(f"{device_type}:{chosen}:{pairs[0][0]}",
               f"fusedrnn: using backend {chosen!r} for {device_type} tensors; "
               + "; ".join(f"{n!r} was passed over: {w}" for n, w in pairs))


def _why_not(name: str, cell: CellSpec, x, weights: LayerWeights, zoneout: bool = False) -> Optional[str]:
    """None when backend ``name`` can run this call, else why not: unavailable here, no kernels for
    the cell (with zoneout, where the call has it), or tensors it does not take."""
    why = unavailable_reason(name)
    if why is not None:
        return why
    backend = _instance(name)
    if not backend.runs(cell):
        return _no_kernels(cell.family, cell.mode)
    if zoneout and not backend.runs_zoneout(cell):
        return _no_zoneout_kernels(cell.family, cell.mode)
    return backend.unsupported(cell, x, weights)


@_constant_when_traced
def _no_kernels(family: str, mode: str) -> str:
    """Why a backend cannot run a cell it has no kernels for; a constant under Dynamo, which passes only
    constants to :func:`_warn_fallback` (a formatted string is not one)."""
    return f"it has no kernels for the {CellSpec(family, mode)} cell"


@_constant_when_traced
def _no_zoneout_kernels(family: str, mode: str) -> str:
    """Why a backend cannot run a call with zoneout on a cell it has no zoneout kernels for (a constant under
    Dynamo, as :func:`_no_kernels`)."""
    return f"it has no kernels for zoneout with the {CellSpec(family, mode)} cell"


def resolve(name: Optional[str], cell: CellSpec, x, weights: LayerWeights, zoneout: bool = False) -> Backend:
    """The backend to run ``cell`` on these tensors (with zoneout, where ``zoneout``), by the rules above."""
    wanted = requested(name)
    if wanted != "auto":
        if wanted not in _REGISTRY:
            raise _unknown(wanted)
        why = _why_not(wanted, cell, x, weights, zoneout)
        if why is not None:
            raise RuntimeError(
                f"fusedrnn backend {wanted!r} cannot run this call: {why}. "
                f"Available backends: {available()}"
            )
        return _instance(wanted)
    preference = AUTO_PREFERENCE.get(x.device.type, _DEFAULT_PREFERENCE)
    passed_over = []
    for candidate in preference:
        why = _why_not(candidate, cell, x, weights, zoneout)
        if why is None:
            if passed_over:
                _warn_fallback(x.device.type, candidate, *(item for pair in passed_over for item in pair))
            return _instance(candidate)
        passed_over.append((candidate, why))
    raise RuntimeError(
        "no fusedrnn backend can run this call: " + "; ".join(f"{n}: {w}" for n, w in passed_over)
    )


#: functorch transforms the custom ops run under as they are: vmap (torch runs an op that has no
#: vmap rule once per sample) and functionalize (the ops mutate nothing)
_OP_TRANSFORMS = frozenset((TransformType.Vmap, TransformType.Functionalize))
#: what the user called, per differentiating transform, for the warning
_TRANSFORM_NAMES = {TransformType.Grad: "torch.func.grad/vjp/jacrev", TransformType.Jvp: "torch.func.jvp/jacfwd"}


@_constant_when_traced
def _differentiating_transform() -> Optional[str]:
    """The torch.func transform in force that differentiates (grad, vjp, jacrev, jvp, jacfwd,
    hessian, also around or inside vmap), or None.

    The fused ops cannot run under these: torch.library has no forward-mode formula for a custom op
    (``register_autograd`` is reverse mode only), and the autograd.Function it builds lacks the
    ``setup_context`` staticmethod functorch requires (pytorch/pytorch#168393, #179652), so jvp
    gives zero tangents and grad/jacrev raise.  Constant when traced: Dynamo models
    ``peek_interpreter_stack()`` as never None, which would send every compiled call to the
    reference; called for real while Dynamo traces, it sees the transforms being traced.
    """
    if peek_interpreter_stack() is None:  # no transform in force
        return None
    for interpreter in get_interpreter_stack():
        if interpreter.key() not in _OP_TRANSFORMS:
            return _TRANSFORM_NAMES.get(interpreter.key(), f"torch.func ({interpreter.key().name})")
    return None


def differentiable_only(chosen: Backend, tensors) -> bool:
    """True when a call on ``tensors`` must run as plain differentiable torch ops (the reference's
    forward, called directly) rather than as a fused op: under a differentiating torch.func
    transform, or with a forward-mode tangent on one of ``tensors``.  Then, when ``chosen`` (the
    backend resolved for the call) is another backend, it warns once per (backend, reason), as auto
    does when it passes a backend over.  False whenever no functorch transform is in force and no
    forward-AD dual level is open (``fusedrnn.functional.layer`` checks that first, inline)."""
    why = _differentiating_transform()
    if why is None and forward_ad._current_level >= 0:  # inside a dual_level: look for tangents
        if any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
            why = "torch.autograd.forward_ad"
    if why is None:
        return False
    if chosen.name != "reference":
        _warn_once(
            f"differentiable:{chosen.name}:{why}",
            f"fusedrnn: using backend 'reference' instead of {chosen.name!r} under {why}: the fused ops "
            "have no forward-mode formula and torch.func cannot differentiate through them, so this "
            "call runs as plain torch ops (exact, slower)",
        )
    return True


def strategy_for(name: str, cell: CellSpec, x, backward: bool) -> str:
    """The ``strategy`` argument of the ops for a call on backend ``name``: the backend's setting
    (:meth:`Backend.strategy_for`), or ``"auto"`` for ``"auto"`` (a traced graph's backend, resolved where it runs)."""
    return "auto" if name == "auto" else get(name).strategy_for(cell, x, backward)


def get(name: str) -> Backend:
    """The backend called ``name`` (raises if unknown or unavailable)."""
    if name not in _REGISTRY:
        raise _unknown(name)
    why = unavailable_reason(name)
    if why is not None:
        raise RuntimeError(f"fusedrnn backend {name!r} is unavailable: {why}. Available backends: {available()}")
    return _instance(name)


__all__ = [
    "AUTO_PREFERENCE",
    "Backend",
    "BackwardResult",
    "ForwardResult",
    "LayerWeights",
    "available",
    "declared_cells",
    "differentiable_only",
    "get",
    "names",
    "strategy_for",
    "register",
    "report",
    "requested",
    "resolve",
    "unavailable_reason",
    "use_backend",
]
