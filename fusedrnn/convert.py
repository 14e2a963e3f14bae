"""``fusedrnn.convert(model)``: swap torch.nn's recurrent modules for fusedrnn's, in place.

Every submodule that is an ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``,
``nn.LSTMCell``, ``nn.GRUCell`` or ``nn.RNNCell`` is replaced by a fusedrnn
module with the same constructor settings, holding the very same
``Parameter`` objects (so weights, device, dtype, ``requires_grad`` and any
optimizer that already holds them stay valid), the same buffers, submodules,
training mode and hooks (forward, backward and state_dict hooks).

An instance of the exact torch.nn class becomes an instance of fusedrnn's
twin.  An instance of a user's subclass (its own ``forward``, methods,
attributes) becomes an instance of a class deriving from both the user's
class and fusedrnn's (:mod:`fusedrnn._converted_classes`): the user's methods
run, their ``super().forward`` runs fusedrnn's, and the instance keeps its
own attributes.  Left alone, and named in one warning, are modules that
cannot be a drop-in: parametrized ones (``torch.nn.utils.parametrize``), ones
whose parameters are not torch's layout (e.g. the old ``weight_norm``), and
subclasses whose own names (methods, attributes, submodules) clash with
fusedrnn's internals, which would change what fusedrnn's forward runs.
fusedrnn's own modules (instances of ``nn.LSTM`` and co. too) are kept as they are.
"""

from __future__ import annotations

import copy
import inspect
import types
import warnings
from typing import Dict, List, Optional, Tuple

from torch import nn
from torch.nn.utils import parametrize

from . import _converted_classes, cell_modules, modules
from ._module_checks import check_backend_name

__all__ = ["convert"]

# each torch.nn class and its fusedrnn twin
_TWINS = (
    (nn.LSTM, modules.LSTM),
    (nn.GRU, modules.GRU),
    (nn.RNN, modules.RNN),
    (nn.LSTMCell, cell_modules.LSTMCell),
    (nn.GRUCell, cell_modules.GRUCell),
    (nn.RNNCell, cell_modules.RNNCell),
)
_CONVERTIBLE = tuple(torch_cls for torch_cls, _ in _TWINS)
_FUSED = (modules.FusedRNNBase, cell_modules.FusedRNNCellBase)

# What nn.Module.__init__ sets (registries, hooks, training): taken from the old module.
_MODULE_STATE = frozenset(nn.Module().__dict__)
# ... of which these containers are copied, so that the new module owns its registries; the hook
# dicts are shared, so that existing hooks (and their RemovableHandles, which point at these
# dicts) keep working
_OWN_COPY = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})
# torch's caches of the old module, not carried: nn.RNNBase's flat-weight list and its weak
# references (fusedrnn reads the parameters at each call), and a Module.compile()'d call bound
# to the old module
_NOT_CARRIED = frozenset({"_flat_weights", "_flat_weight_refs", "_compiled_call_impl"})


def _twins(m: nn.Module) -> Tuple[type, type]:
    """The torch.nn class ``m`` is an instance of, and fusedrnn's twin of it."""
    return next((torch_cls, fused) for torch_cls, fused in _TWINS if isinstance(m, torch_cls))


def construct_like(cls: type, m: nn.Module, **extra) -> nn.Module:
    """A ``cls`` with the settings of ``m``, where ``cls`` is one of torch.nn's recurrent classes or fusedrnn's
    twin of one (the same constructor) and ``m`` a module of the same kind, torch.nn's or fusedrnn's.
    ``extra`` go to the constructor (``device``, fusedrnn's ``backend``)."""
    def nonlinearity():  # an Elman RNN's: torch.nn's and fusedrnn's attribute, or a fusedrnn.Recurrent's mode
        return m.nonlinearity if hasattr(m, "nonlinearity") else m.cell.mode

    if issubclass(cls, nn.RNNBase):
        settings = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first, dropout=m.dropout,
                        bidirectional=m.bidirectional)
        if issubclass(cls, nn.LSTM):
            settings["proj_size"] = m.proj_size
        if issubclass(cls, nn.RNN):
            settings["nonlinearity"] = nonlinearity()
        return cls(m.input_size, m.hidden_size, **settings, **extra)
    if issubclass(cls, nn.RNNCell):
        return cls(m.input_size, m.hidden_size, m.bias, nonlinearity(), **extra)
    return cls(m.input_size, m.hidden_size, m.bias, **extra)


def _build(m: nn.Module, fused_cls: type, backend: str) -> nn.Module:
    """A ``fused_cls`` with ``m``'s settings and uninitialised (meta) parameters.

    Built on the meta device so that construction draws nothing from the RNG
    and allocates nothing: only its settings and bookkeeping are kept.
    """
    return construct_like(fused_cls, m, device="meta", backend=backend)


def _layout_mismatch(m: nn.Module, twin: nn.Module) -> Optional[str]:
    """Why ``m``'s parameters are not torch's layout (names in order, shapes), or None if they are.

    Extra parameters (a subclass's own) are allowed; they are carried over."""
    layout = list(twin._parameters)
    present = [name for name in m._parameters if name in twin._parameters]
    if present != layout:
        names = [name for name, _ in m.named_parameters(recurse=False)]
        return f"its parameters {names} are not torch's layout {[n for n in layout if twin._parameters[n] is not None]}"
    for name in layout:
        old, new = m._parameters[name], twin._parameters[name]
        if (old is None) != (new is None) or (old is not None and old.shape != new.shape):
            shape = None if old is None else list(old.shape)
            return f"its parameter {name} has shape {shape}, not torch's {None if new is None else list(new.shape)}"
    return None


def _defined_names(classes) -> set:
    return {name for cls in classes for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))}


def _collision(m: nn.Module, twin: nn.Module, new_cls: type) -> Optional[str]:
    """Why ``m``'s own names would clash with fusedrnn's in ``new_cls``, or None.

    A subclass's method or attribute named like one of fusedrnn's internals (which torch.nn
    does not define) would change what fusedrnn's forward runs, or hide the subclass's own value.
    """
    torch_mro = set(_twins(m)[0].__mro__)
    fused_names = _defined_names(k for k in type(twin).__mro__ if k not in torch_mro) - _defined_names(torch_mro)
    user_names = _defined_names(k for k in type(m).__mro__ if k not in torch_mro and k is not object)
    clash = sorted(fused_names & user_names)
    if clash:
        return f"its class defines {clash}, which fusedrnn's {type(twin).__name__} defines too"
    # a submodule, parameter or buffer is found by nn.Module.__getattr__, which runs only when
    # neither the class nor the instance's __dict__ (fusedrnn's own settings: backend, ...) has the name
    fused_attributes = fused_names | (set(twin.__dict__) - set(m.__dict__))
    registered = sorted(fused_attributes & {*m._modules, *m._parameters, *m._buffers})
    if registered:
        return f"its submodules/parameters/buffers {registered} would be hidden by fusedrnn's {type(twin).__name__}"
    for key, value in m.__dict__.items():
        if key in _MODULE_STATE or key in _NOT_CARRIED:
            continue
        if key in twin.__dict__ and not _same(value, twin.__dict__[key]):
            return f"its attribute {key!r} = {value!r} would be fusedrnn's {twin.__dict__[key]!r}"
        # a data descriptor of fusedrnn's (a property: cell) wins over the instance's own value
        if key in fused_names and hasattr(type(inspect.getattr_static(new_cls, key, None)), "__set__"):
            return f"its attribute {key!r} would be hidden by fusedrnn's {type(twin).__name__}.{key}"
    return None


def _same(a, b) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # e.g. a tensor of several elements: not a setting fusedrnn shares with torch
        return False


def _carried(value, old: nn.Module, new: nn.Module):
    """An attribute value moved from ``old`` to ``new``: a method bound to ``old`` is bound to ``new``."""
    if isinstance(value, types.MethodType) and value.__self__ is old:
        return types.MethodType(value.__func__, new)
    return value


def _replacement(m: nn.Module, backend: str) -> Tuple[Optional[nn.Module], Optional[str]]:
    """The fusedrnn module that takes ``m``'s place, or None with the reason it cannot be."""
    if parametrize.is_parametrized(m):
        return None, "parametrized with torch.nn.utils.parametrize: its weights are computed at each access"
    fused_cls = _twins(m)[1]
    twin = _build(m, fused_cls, backend)
    why = _layout_mismatch(m, twin)
    if why is not None:
        return None, why
    try:
        new_cls = _converted_classes.converted_class(type(m), fused_cls)
    except TypeError as error:  # e.g. a subclass with __slots__: no class derives from both
        return None, f"no class derives from both it and fusedrnn.{fused_cls.__name__} ({error})"
    why = _collision(m, twin, new_cls)
    if why is not None:
        return None, why
    new = _converted_classes.new_instance(type(m), fused_cls)
    transplant(m, new, twin)
    return new, None


def transplant(old: nn.Module, new: nn.Module, twin: nn.Module, dropped=frozenset()) -> None:
    """Give the empty instance ``new`` the state that takes ``old``'s place: ``twin``'s settings and bookkeeping
    (mode, sizes, fusedrnn's backend, ...; ``twin`` is a module of ``new``'s kind built with ``old``'s settings),
    then from ``old`` nn.Module's registries and hooks, and every attribute that is neither torch's cache, nor
    the twin's, nor in ``dropped``.  Used both ways: by convert, and by fusedrnn.revert."""
    state = dict(twin.__dict__)
    for key, value in old.__dict__.items():
        if key in _NOT_CARRIED or key in dropped:
            continue
        if key in _OWN_COPY:
            state[key] = copy.copy(value)
        elif key in _MODULE_STATE or key not in state:
            state[key] = _carried(value, old, new)
    new.__dict__.update(state)


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace torch.nn's LSTM/GRU/RNN modules and cells inside ``model`` by fusedrnn's, in place.

    Returns ``model`` (or, when ``model`` itself is one of those types, its replacement).
    ``backend`` is given to every new module (fusedrnn modules already there keep theirs).
    A module reachable from several places is replaced by one new module everywhere (shared
    weights stay shared).
    """
    check_backend_name(backend)
    # id(old) -> (old, new); holding old keeps its id from being reused by another module
    done: Dict[int, Tuple[nn.Module, nn.Module]] = {}
    skipped: List[str] = []

    def swap(m: nn.Module, path: str) -> nn.Module:
        if id(m) in done:  # already visited through another path
            return done[id(m)][1]
        new = m
        if isinstance(m, _CONVERTIBLE) and not isinstance(m, _FUSED):
            replacement, why = _replacement(m, backend)
            if replacement is None:
                skipped.append(f"{path or '<model>'} ({type(m).__module__}.{type(m).__qualname__}: {why})")
            else:
                new = replacement
        done[id(m)] = (m, new)
        for name, child in list(new.named_children()):
            new_child = swap(child, f"{path}.{name}" if path else name)
            if new_child is not child:
                setattr(new, name, new_child)
        return new

    result = swap(model, "")
    if skipped:
        warnings.warn(
            "fusedrnn.convert left these modules unconverted: " + "; ".join(skipped),
            UserWarning,
            stacklevel=2,
        )
    return result
