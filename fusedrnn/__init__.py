"""fusedrnn: fused LSTM, GRU and RNN layers for PyTorch behind torch.nn's API.

``fusedrnn.LSTM``, ``GRU``, ``RNN``, ``LSTMCell``, ``GRUCell`` and ``RNNCell``
are drop-in replacements for their torch.nn twins, and :func:`convert` swaps
them into an existing model (:func:`revert` swaps them back, for the tools that
need torch.nn's classes); ``Recurrent`` is the same stacked module for any
family of the cell table (:mod:`fusedrnn.cells`); ``IndRNN``, ``LayerNormLSTM``,
``LayerNormGRU``, ``SLSTM`` (and their cells) the cells torch.nn lacks, on the reference backend so far; :mod:`fusedrnn.functional`
runs one layer-direction;
:func:`use_backend`, :func:`available` and :func:`report` choose and list the
backends (:mod:`fusedrnn.backends`).  :mod:`fusedrnn.onnx` exports them to ONNX
(``import fusedrnn`` registers what ``torch.onnx.export(..., dynamo=False)`` needs),
:mod:`fusedrnn.quantization` lets ``quantize_dynamic`` quantize them, and
:mod:`fusedrnn.torchscript` says why TorchScript refuses them (README.md, "Deployment").

Importing fusedrnn loads neither Triton nor the compiled extension: backends
are imported the first time a call needs them.
"""

from . import functional, onnx, quantization
from .backends import available, report, use_backend
from .cell_modules import GRUCell, IndRNNCell, LayerNormGRUCell, LayerNormLSTMCell, LSTMCell, RNNCell, SLSTMCell
from .cells import CellSpec
from .convert import convert
from .modules import GRU, LSTM, RNN, SLSTM, IndRNN, LayerNormGRU, LayerNormLSTM, Recurrent
from .pyramid import PyramidGRU, PyramidLSTM
from .revert import revert

__version__ = "0.1.0"

# quantize_dynamic(model, {fusedrnn.LSTM, ...}) quantizes fusedrnn's layers (torch's default mapping knows them)
quantization.register()

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "Recurrent",
    "IndRNN",
    "LayerNormLSTM",
    "LayerNormGRU",
    "SLSTM",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "IndRNNCell",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "SLSTMCell",
    "PyramidLSTM",
    "PyramidGRU",
    "convert",
    "revert",
    "functional",
    "use_backend",
    "available",
    "report",
    "CellSpec",
]
