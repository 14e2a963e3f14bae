"""``fusedrnn.convert(model)``: swap torch.nn's recurrent modules for fusedrnn's, in place.

Every submodule whose type is exactly ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``,
``nn.LSTMCell``, ``nn.GRUCell`` or ``nn.RNNCell`` is replaced by the fusedrnn
equivalent with the same constructor settings, holding the very same
``Parameter`` objects (so weights, device, dtype, ``requires_grad`` and any
optimizer that already holds them stay valid), the same training mode and
the same forward/backward hooks.  A subclass of those types may have its own
``forward`` or state, and a module whose parameters are not torch's layout
(e.g. under ``torch.nn.utils.parametrize``) cannot be a drop-in: both are
left alone and named in one warning.
"""

from __future__ import annotations

import warnings
from typing import Dict, List

from torch import nn

from . import cell_modules, modules

__all__ = ["convert"]


def _rnn_settings(m: nn.RNNBase) -> dict:
    return dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first, dropout=m.dropout,
                bidirectional=m.bidirectional)


def _build(m: nn.Module, backend: str) -> nn.Module:
    """The fusedrnn twin of ``m``, with uninitialised (meta) parameters, same settings.

    Built on the meta device so that construction draws nothing from the RNG
    and allocates nothing: its parameters are replaced by ``m``'s own.
    """
    kind = type(m)
    meta = dict(device="meta", backend=backend)
    if kind is nn.LSTM:
        return modules.LSTM(m.input_size, m.hidden_size, proj_size=m.proj_size, **_rnn_settings(m), **meta)
    if kind is nn.GRU:
        return modules.GRU(m.input_size, m.hidden_size, **_rnn_settings(m), **meta)
    if kind is nn.RNN:
        return modules.RNN(m.input_size, m.hidden_size, nonlinearity=m.nonlinearity, **_rnn_settings(m), **meta)
    if kind is nn.LSTMCell:
        return cell_modules.LSTMCell(m.input_size, m.hidden_size, m.bias, **meta)
    if kind is nn.GRUCell:
        return cell_modules.GRUCell(m.input_size, m.hidden_size, m.bias, **meta)
    if kind is nn.RNNCell:
        return cell_modules.RNNCell(m.input_size, m.hidden_size, m.bias, m.nonlinearity, **meta)
    raise TypeError(f"no fusedrnn equivalent for {kind.__name__}")  # unreachable: callers check _CONVERTIBLE


_CONVERTIBLE = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


# nn.Module's hook registries: shared with the replacement, so existing hooks (and their
# RemovableHandles, which point at these dicts) keep working
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
)


def _replacement(m: nn.Module, backend: str):
    """The fusedrnn module holding ``m``'s own parameters, or None with the reason it cannot be."""
    old_params = dict(m.named_parameters(recurse=False))
    new = _build(m, backend)
    new_names = [name for name, _ in new.named_parameters(recurse=False)]
    # the same layout is the drop-in contract (strict, as load_state_dict(strict=True));
    # it differs e.g. under torch.nn.utils.parametrize, and then the module is left alone
    if list(old_params) != new_names or list(m.state_dict()) != list(new.state_dict()):
        return None, f"its parameters {list(m.state_dict())} are not torch's layout {new_names}"
    for name, param in old_params.items():
        setattr(new, name, param)
    for attr in _HOOK_DICTS:
        if attr in m.__dict__:
            new.__dict__[attr] = m.__dict__[attr]
    new.train(m.training)
    return new, None


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace torch.nn's LSTM/GRU/RNN modules and cells inside ``model`` by fusedrnn's, in place.

    Returns ``model`` (or, when ``model`` itself is one of those types, its replacement).
    ``backend`` is given to every new module.  A module reachable from several places
    is replaced by one new module everywhere (shared weights stay shared).
    """
    modules.check_backend_name(backend)
    done: Dict[int, nn.Module] = {}
    skipped: List[str] = []

    def swap(m: nn.Module, path: str) -> nn.Module:
        if isinstance(m, _CONVERTIBLE):
            if id(m) not in done:
                new, why = _replacement(m, backend) if type(m) in _CONVERTIBLE else (None, "a subclass, which may change the behaviour")
                done[id(m)] = m if new is None else new
                if new is None:
                    skipped.append(f"{path or '<model>'} ({type(m).__module__}.{type(m).__qualname__}: {why})")
            return done[id(m)]
        if id(m) in done:  # already visited through another path
            return m
        done[id(m)] = m
        for name, child in list(m.named_children()):
            new_child = swap(child, f"{path}.{name}" if path else name)
            if new_child is not child:
                setattr(m, name, new_child)
        return m

    result = swap(model, "")
    if skipped:
        warnings.warn(
            "fusedrnn.convert left these modules unconverted: " + "; ".join(skipped),
            UserWarning,
            stacklevel=2,
        )
    return result
