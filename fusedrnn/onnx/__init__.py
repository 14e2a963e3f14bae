"""ONNX export of models holding fusedrnn's layers, with both of torch's exporters.

Each layer-direction of a fusedrnn module is one ``fusedrnn::{family}_forward`` op; this package
says what ONNX nodes stand in for it (:mod:`fusedrnn.onnx._lowering`, once for both exporters):

* ``torch.onnx.export(model, args, f, dynamo=False)`` works as it is: ``import fusedrnn``
  registers a symbolic function for each op (:mod:`fusedrnn.onnx._torchscript`);
* ``torch.onnx.export(model, args, dynamo=True)`` needs the ops' translations, passed as
  ``custom_translation_table=fusedrnn.onnx.translation_table()`` (:mod:`fusedrnn.onnx._dynamo`);
  :func:`export` is ``torch.onnx.export`` with them in place, for either exporter.

The result uses ONNX's own LSTM, GRU (``linear_before_reset`` 1 or 0 for the two forms) and RNN
operators, peepholes included, and a ``Loop`` for an LSTM with a projection; the sequence length
and the batch stay dynamic.  PackedSequence input cannot be exported (a clear RuntimeError says
what to do instead).  README.md, section "Deployment", compares the paths with torch.nn's.
"""

from ._dynamo import translation_table
from ._export import export
from ._torchscript import MIN_OPSET, register

__all__ = ["export", "translation_table", "register", "MIN_OPSET"]

register()
