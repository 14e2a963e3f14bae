"""``torch.ao.quantization.quantize_dynamic`` on models holding fusedrnn's layers.

torch's eager-mode dynamic quantization swaps a module by its exact class, through a mapping
from float classes to quantized ones.  :func:`register` (run by ``import fusedrnn``) adds
fusedrnn's classes to torch's default mapping, so that ``quantize_dynamic(model, {fusedrnn.LSTM,
fusedrnn.GRU, ...}, dtype)`` quantizes them as it quantizes torch.nn's: each becomes torch's
dynamically quantized module (int8 or float16 weights, float activations), built from the
layer's torch.nn twin (:func:`fusedrnn.revert.reverted`, same weights), so the result is exactly
what the same model written with torch.nn gives.  fusedrnn has no int8 kernels of its own: at the
shape measured (README.md, "Deployment") torch's int8 LSTM is faster on the CPU than fusedrnn's
float32 one.

Where torch has no quantized module (``RNN``, an LSTM with ``proj_size``, peepholes, the
``reset_after=False`` GRU), the layer stays float32, with a warning naming the reason: never
silently, and never a broken module (torch's own quantized LSTM built from an ``nn.LSTM`` with
``proj_size`` fails at its first call).  A spec naming torch.nn's classes (``{nn.LSTM}``, and
the default spec) does not select fusedrnn's layers, since torch matches classes exactly: they
stay float32 and compute what they computed.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings

from . import cell_modules, modules
from .revert import _torch_class, reverted

__all__ = ["register", "QUANTIZED"]

#: fusedrnn's class -> torch's dynamically quantized class of its torch.nn twin (None: torch has none)
QUANTIZED = {
    modules.LSTM: nnqd.LSTM,
    modules.GRU: nnqd.GRU,
    modules.RNN: None,
    cell_modules.LSTMCell: nnqd.LSTMCell,
    cell_modules.GRUCell: nnqd.GRUCell,
    cell_modules.RNNCell: nnqd.RNNCell,
}
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


class _ThroughTorchNN:
    """The mapping's target for one fusedrnn class: ``from_float`` (what quantize_dynamic calls) quantizes the
    layer's torch.nn twin with torch's quantized class, or keeps the layer float32 with a warning."""

    def __init__(self, fused_cls: type, quantized_cls) -> None:
        self.fused_cls = fused_cls
        self.quantized_cls = quantized_cls

    def from_float(self, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        why = self._unquantizable(mod)
        if why is not None:
            warnings.warn(f"quantize_dynamic: {self.fused_cls.__name__} stays float32 ({why})", UserWarning,
                          stacklevel=2)
            return _same_module(mod)
        twin = reverted(mod)
        return self.quantized_cls.from_float(twin, use_precomputed_fake_quant=use_precomputed_fake_quant)

    def _unquantizable(self, mod: nn.Module):
        if self.quantized_cls is None:
            return f"torch has no dynamically quantized {self.fused_cls.__name__}, for torch.nn's neither"
        cls, why = _torch_class(mod)
        if cls is None:
            return f"{why}; torch's quantized modules compute torch.nn's cells only"
        if getattr(mod, "proj_size", 0) > 0:
            return "torch's dynamically quantized LSTM has no projection (proj_size)"
        return None


def _same_module(mod: nn.Module) -> nn.Module:
    """``mod`` as it is, for quantize_dynamic to put back: a new object sharing everything with ``mod`` except
    the forward hooks, which quantize_dynamic registers again on what ``from_float`` returns (on ``mod``
    itself, each would then run twice)."""
    same = type(mod).__new__(type(mod))
    same.__dict__.update(mod.__dict__)
    for name in _HOOK_DICTS:
        if name in same.__dict__:
            same.__dict__[name] = OrderedDict()
    return same


def register() -> None:
    """Add fusedrnn's classes to torch's default mapping for dynamic quantization (idempotent)."""
    mapping = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for fused_cls, quantized_cls in QUANTIZED.items():
        mapping[fused_cls] = _ThroughTorchNN(fused_cls, quantized_cls)
