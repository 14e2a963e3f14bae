"""``fusedrnn.revert(model)``: the inverse of :func:`fusedrnn.convert`, back to torch.nn's classes.

For the toolchains that accept torch.nn's own recurrent classes only (TorchScript, eager-mode
quantization, torch.nn's ONNX export of PackedSequence input, mobile): every fusedrnn
``LSTM``/``GRU``/``RNN`` (and ``fusedrnn.Recurrent`` of those cells) and cell inside ``model``
becomes its torch.nn twin holding the very same ``Parameter`` objects (weights, dtype, device,
``requires_grad`` and optimizers' references stay valid), the same buffers, submodules,
training flag, hooks and the settings torch.nn has (``num_layers``, ``bidirectional``,
``batch_first``, ``proj_size``, ``nonlinearity``, ...).  A converted user subclass
(``FusedMyLSTM(MyLSTM, fusedrnn.LSTM)``, made by :func:`fusedrnn.convert`) becomes a ``MyLSTM``
again, its own attributes kept.  What only fusedrnn has (``backend``) is dropped.

Modules torch.nn cannot express are refused before anything changes: one ValueError names every
such module by its path and the feature (peephole connections, the ``reset_after=False`` GRU, a
cell only fusedrnn's table has, a subclass of a fusedrnn class that ``convert`` did not make, a
parametrized layer).
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

from torch import nn
from torch.nn.utils import parametrize

from . import _converted_classes, cell_modules, modules
from .cells import CellSpec, torch_twin
from .convert import _TWINS, _build, construct_like, transplant

__all__ = ["revert", "reverted"]

_FUSED = (modules.FusedRNNBase, cell_modules.FusedRNNCellBase)
# fusedrnn's classes whose instances revert to the torch.nn class of their cell (Recurrent has no twin
# class of its own, but a Recurrent of a torch.nn cell is that cell's module)
_OWN_CLASSES = {fused for _, fused in _TWINS} | {modules.Recurrent}
_TORCH_CELL_CLASSES = {fused: torch_cls for torch_cls, fused in _TWINS
                       if issubclass(fused, cell_modules.FusedRNNCellBase)}


def _cell_of(m: nn.Module) -> CellSpec:
    return m.cell if isinstance(m, modules.FusedRNNBase) else m._cell()


def _torch_class(m: nn.Module) -> Tuple[Optional[type], Optional[str]]:
    """The torch.nn class (or the user's class) ``m`` reverts to, or None and why it cannot."""
    if parametrize.is_parametrized(m):
        return None, ("parametrized with torch.nn.utils.parametrize (torch.nn's RNNs read their weights from a "
                      "cache that a parametrization would bypass); remove_parametrizations first")
    cell = _cell_of(m)
    twin = torch_twin(cell)
    if twin is None:
        if cell.family == "gru":
            torch_name = "GRUCell" if isinstance(m, cell_modules.FusedRNNCellBase) else "GRU"
            return None, (f"reset_after=False (the original GRU of Cho et al.), which torch.nn.{torch_name} "
                          "does not compute")
        return None, f"the cell {cell}, which only fusedrnn's cell table has"
    if isinstance(m, modules.FusedRNNBase):
        if getattr(m, "zoneout", 0.0):
            return None, f"zoneout={m.zoneout} (haste's zoneout of h), which torch.nn.{twin[0]} lacks"
        if getattr(m, "dropconnect", 0.0):
            return None, f"dropconnect={m.dropconnect} (DropConnect of weight_hh), which torch.nn.{twin[0]} lacks"
        if m.peephole:
            return None, f"peephole connections (weight_ch_l*), which torch.nn.{twin[0]} lacks"
        torch_cls = getattr(nn, twin[0])
    else:
        if "weight_ch" in m._parameters:
            return None, f"peephole connections (weight_ch), which torch.nn.{type(m).__name__} lacks"
        torch_cls = next(_TORCH_CELL_CLASSES[k] for k in type(m).__mro__ if k in _TORCH_CELL_CLASSES)
    cls = type(m)
    if cls in _OWN_CLASSES:
        return torch_cls, None
    user_cls, fused_cls = cls.__bases__[0], cls.__bases__[-1]
    if cls.__module__ == _converted_classes.__name__ and _converted_classes.converted_class(user_cls, fused_cls) is cls:
        return user_cls, None  # made by fusedrnn.convert from the user's subclass of torch_cls
    return None, (f"its class {cls.__module__}.{cls.__qualname__} subclasses fusedrnn's own and has no torch.nn "
                  "class to become (fusedrnn.convert did not make it)")


def _settings(m: nn.Module, torch_cls: type) -> nn.Module:
    """A ``torch_cls`` with ``m``'s settings, its parameters on the meta device (its settings and torch's
    bookkeeping are kept; its parameters are replaced by ``m``'s)."""
    base = next(k for k in torch_cls.__mro__ if k in {t for t, _ in _TWINS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's dropout-with-one-layer warning was given at construction
        return construct_like(base, m, device="meta")


def _fused_only(m: nn.Module, twin: nn.Module) -> set:
    """The attributes fusedrnn's construction gives ``m`` and torch.nn's does not give ``twin`` (backend, ...)."""
    base = next(k for k in type(m).__mro__ if k in _OWN_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout-with-one-layer warning, as in _settings
        if base is modules.Recurrent:
            fresh = base(m.cell.family, m.input_size, m.hidden_size, m.num_layers, device="meta", mode=m.cell.mode)
        else:
            fresh = _build(twin, base, "auto")
    return set(fresh.__dict__) - set(twin.__dict__)


def _replacement(m: nn.Module, cls: type) -> nn.Module:
    twin = _settings(m, cls)
    dropped = _fused_only(m, twin)
    new = cls.__new__(cls)
    transplant(m, new, twin, dropped)
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # torch's cached list of the (now real) parameters, and its weak references
    return new


def reverted(m: nn.Module) -> nn.Module:
    """The torch.nn module taking the place of the fusedrnn layer or cell ``m`` (``m`` itself is left as it
    is; its submodules are not reverted); ValueError naming the feature when torch.nn has none."""
    cls, why = _torch_class(m)
    if cls is None:
        raise ValueError(f"fusedrnn.revert: no torch.nn module can take the place of {type(m).__qualname__}: {why}")
    return _replacement(m, cls)


def revert(model: nn.Module) -> nn.Module:
    """Replace fusedrnn's layers and cells inside ``model`` by torch.nn's, in place (the inverse of ``convert``).

    Returns ``model`` (or, when ``model`` itself is a fusedrnn layer, its replacement).  A module reachable
    from several places is replaced by one new module everywhere.  Raises ValueError, naming each module's
    path and the feature, when one of them has no torch.nn equivalent; the model is then left unchanged.
    """
    targets: Dict[int, type] = {}
    refused: List[str] = []
    for path, m in model.named_modules(remove_duplicate=True):
        if isinstance(m, _FUSED) and id(m) not in targets:
            cls, why = _torch_class(m)
            if cls is None:
                refused.append(f"{path or '<model>'} ({type(m).__module__}.{type(m).__qualname__}): {why}")
            else:
                targets[id(m)] = cls
    if refused:
        raise ValueError("fusedrnn.revert: no torch.nn module can take the place of " + "; ".join(refused)
                         + ". Nothing was changed.")

    done: Dict[int, Tuple[nn.Module, nn.Module]] = {}  # id(old) -> (old, new); holding old keeps its id unique

    def swap(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)][1]
        new = _replacement(m, targets[id(m)]) if id(m) in targets else m
        done[id(m)] = (m, new)
        for name, child in list(new.named_children()):
            new_child = swap(child)
            if new_child is not child:
                setattr(new, name, new_child)
        return new

    return swap(model)
