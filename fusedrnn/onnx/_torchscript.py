"""``torch.onnx.export(..., dynamo=False)``: a symbolic function for each family's forward op.

The TorchScript-based exporter traces the model, so each layer-direction reaches it as one
``fusedrnn::{family}_forward`` node; :func:`register` tells the exporter (its public
``torch.onnx.register_custom_op_symbolic``) to build the ONNX nodes of
:func:`fusedrnn.onnx._lowering.lower` in its place, through :class:`GraphBuilder`.
``import fusedrnn`` registers them, so a plain ``torch.onnx.export(model, args, f, dynamo=False)``
exports fusedrnn's layers as it exports torch.nn's.
"""

from __future__ import annotations

import torch
from torch import _C

from ..cells import FAMILIES
from ..ops import NAMESPACE
from ._lowering import Builder, lower

__all__ = ["register", "MIN_OPSET", "GraphBuilder"]

#: the oldest opset the lowering is written for: Squeeze, Unsqueeze and Split take their axes and sizes as
#: inputs from opset 13 on (opset 18 exports them the same way)
MIN_OPSET = 13


def _suffixed(name: str, value) -> str:
    """The TorchScript exporter's attribute naming: ``name_<type letter>``."""
    sample = value[0] if isinstance(value, (list, tuple)) else value
    if isinstance(sample, str):
        return f"{name}_s"
    if isinstance(sample, float):
        return f"{name}_f"
    if isinstance(sample, torch.Tensor):
        return f"{name}_t"
    return f"{name}_i"  # int and bool


class GraphBuilder(Builder):
    """:class:`fusedrnn.onnx._lowering.Builder` over the TorchScript exporter's graph context ``g``."""

    def __init__(self, g) -> None:
        self.g = g

    def _node(self, op_type, inputs, outputs, attrs):
        inputs = [self._absent() if v is None else v for v in inputs]
        results = self.g.op(op_type, *inputs, outputs=outputs, **{_suffixed(k, v): v for k, v in attrs.items()})
        return [results] if outputs == 1 else results

    def _absent(self):
        # an absent optional input: what torch's own RNN symbolics pass (exported as the empty name)
        value = self.g.op("prim::Constant")
        value.setType(_C.OptionalType.ofTensor())
        return value

    def _constant(self, value, dtype):
        return self.g.op("Constant", value_t=torch.tensor(value, dtype=getattr(torch, dtype)))

    def static_shape(self, value):
        from torch.onnx._internal.torchscript_exporter import symbolic_helper

        sizes = symbolic_helper._get_tensor_sizes(value)
        if sizes is None or any(s is None for s in sizes):
            raise RuntimeError(f"fusedrnn: the ONNX export needs the weights' shapes, unknown for {value}")
        return tuple(sizes)

    def _dtype(self, value) -> torch.dtype:
        from torch.onnx._internal.torchscript_exporter import _type_utils

        return _type_utils.JitScalarType.from_value(value).dtype()

    def empty_like(self, value):
        return self.g.op("Constant", value_t=torch.empty(0, dtype=self._dtype(value)))

    def zeros_like(self, value):
        return self.g.op("ConstantOfShape", self.g.op("Shape", value),
                         value_t=torch.zeros(1, dtype=self._dtype(value)))

    def loop(self, trip_count, carried, n_scan, body):
        from torch.onnx._internal.torchscript_exporter import jit_utils

        outputs, (context,), node = jit_utils.add_op_with_blocks(
            self.g, "Loop", trip_count, self.true(), *carried, outputs=len(carried) + n_scan, n_blocks=1)
        block = context.block
        iteration = block.addInputToBlock()
        iteration.setType(_C.TensorType.create_from_tensor(torch.tensor(0)))
        condition = block.addInputToBlock()
        condition.setType(_C.TensorType.create_from_tensor(torch.tensor(True)))
        carried_in = []
        for value in carried:
            inside = block.addInputToBlock()
            inside.setType(value.type())
            carried_in.append(inside)
        new_carried, scans = body(GraphBuilder(context), iteration, carried_in)
        block.registerOutput(context.op("Identity", condition))
        for value in [*new_carried, *scans]:
            block.registerOutput(value)
        return tuple(outputs)


def _symbolic(family: str):
    # the arguments after ``mode`` (backend, for_backward, ...) say how to run the op, nothing about what it
    # computes: taken whatever they are, so that options added to the schema later need nothing here
    def symbolic(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, reverse, mode, *how):
        from torch.onnx._internal.torchscript_exporter import symbolic_helper

        def optional(v):
            return None if symbolic_helper._is_none(v) else v

        return lower(GraphBuilder(g), family, x, h0, optional(c0), w_ih, w_hh, optional(b_ih), optional(b_hh),
                     optional(w_peep), optional(w_proj), optional(batch_sizes),
                     bool(symbolic_helper._parse_arg(reverse, "b")), symbolic_helper._parse_arg(mode, "s"))

    symbolic.__name__ = f"{family}_forward_symbolic"
    return symbolic


_registered = False


def register() -> None:
    """Register the symbolic functions of the built-in families' forward ops (once; idempotent)."""
    global _registered
    if _registered:
        return
    for family in FAMILIES:
        torch.onnx.register_custom_op_symbolic(f"{NAMESPACE}::{family}_forward", _symbolic(family), MIN_OPSET)
    _registered = True
