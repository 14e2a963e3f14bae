"""``torch.onnx.export(..., dynamo=True)``: ONNX translations of fusedrnn's forward ops.

The torch.export-based exporter meets each layer-direction as one ``fusedrnn::{family}_forward``
node of the exported program and looks its translation up in ``custom_translation_table``
(its documented extension point for custom ops): :func:`translation_table` gives one entry per
family, each building the nodes of :func:`fusedrnn.onnx._lowering.lower` through
:class:`IRBuilder` (ONNX IR nodes, as torch's own translations of control flow build them).
Needs ``onnxscript`` (which the exporter needs anyway) and ``onnx_ir``, its dependency.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

from ..cells import FAMILIES
from ..ops import NAMESPACE
from ._lowering import Builder, lower

__all__ = ["translation_table", "IRBuilder"]


def _ir():
    import onnx_ir

    return onnx_ir


def _tensor(value, dtype):
    """An ONNX IR tensor of ``value`` (a Python scalar or list) of ``dtype`` (numpy's)."""
    import numpy as np

    return _ir().tensor(np.asarray(value, dtype=dtype))


class IRBuilder(Builder):
    """:class:`fusedrnn.onnx._lowering.Builder` appending ONNX IR nodes to ``nodes`` (the exporter's list for
    the node being translated, or a loop body's)."""

    def __init__(self, nodes: List) -> None:
        self.nodes = nodes

    def _node(self, op_type, inputs, outputs, attrs):
        ir = _ir()
        node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(attrs), num_outputs=outputs)
        self.nodes.append(node)
        return node.outputs

    def _constant(self, value, dtype):
        return self.op("Constant", value=_tensor(value, dtype))

    def static_shape(self, value):
        shape = value.shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise RuntimeError(f"fusedrnn: the ONNX export needs the weights' shapes, unknown for {value}")
        return tuple(shape)

    def empty_like(self, value):
        return self._constant([], value.dtype.numpy())

    def zeros_like(self, value):
        return self.op("ConstantOfShape", self.op("Shape", value), value=_tensor([0], value.dtype.numpy()))

    def loop(self, trip_count, carried, n_scan, body):
        ir = _ir()
        iteration = ir.Value(name="iteration", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
        condition = ir.Value(name="condition", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
        carried_in = [ir.Value(name=f"carried_{k}", type=ir.TensorType(v.dtype)) for k, v in enumerate(carried)]
        body_nodes: List = []
        new_carried, scans = body(IRBuilder(body_nodes), iteration, carried_in)
        inner = IRBuilder(body_nodes)
        graph = ir.Graph([iteration, condition, *carried_in], [inner.op("Identity", condition), *new_carried, *scans],
                         nodes=body_nodes, name="fusedrnn_step")
        return tuple(self._node("Loop", [trip_count, self.true(), *carried], len(carried) + n_scan,
                                {"body": graph}))


def _recorder_nodes() -> List:
    """The node list of the exporter's recorder for the node being translated."""
    from torch.onnx._internal.exporter import _core

    tracer = getattr(_core, "current_tracer", None)
    if tracer is None or not isinstance(getattr(tracer, "nodes", None), list):
        raise RuntimeError("fusedrnn: this translation runs only inside torch.onnx.export(..., dynamo=True) "
                           f"(torch {torch.__version__}'s exporter did not expose the graph being built)")
    return tracer.nodes


def _translation(family: str) -> Callable:
    # the arguments after ``mode`` (backend, for_backward, ...) say how to run the op, nothing about what it
    # computes: taken whatever they are, so that options added to the schema later need nothing here
    def translate(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj, batch_sizes, reverse: bool, mode: str, *how,
                  **how_by_name):
        return list(lower(IRBuilder(_recorder_nodes()), family, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, w_proj,
                          batch_sizes, reverse, mode))

    translate.__name__ = translate.__qualname__ = f"fusedrnn_{family}_forward"
    return translate


def translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` entries for ``torch.onnx.export(..., dynamo=True)``: each built-in family's
    forward op (``torch.ops.fusedrnn.<family>_forward.default``) and its translation."""
    ops = getattr(torch.ops, NAMESPACE)
    return {getattr(ops, f"{family}_forward").default: _translation(family) for family in FAMILIES}
