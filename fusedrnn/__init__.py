"""fusedrnn: fused LSTM, GRU and RNN layers for PyTorch behind torch.nn's API.

``fusedrnn.LSTM``, ``GRU``, ``RNN``, ``LSTMCell``, ``GRUCell`` and ``RNNCell``
are drop-in replacements for their torch.nn twins, and :func:`convert` swaps
them into an existing model; ``Recurrent`` is the same stacked module for any
family of the cell table (:mod:`fusedrnn.cells`); :mod:`fusedrnn.functional`
runs one layer-direction;
:func:`use_backend`, :func:`available` and :func:`report` choose and list the
backends (:mod:`fusedrnn.backends`).

Importing fusedrnn loads neither Triton nor the compiled extension: backends
are imported the first time a call needs them.
"""

from . import functional
from .backends import available, report, use_backend
from .cell_modules import GRUCell, LSTMCell, RNNCell
from .cells import CellSpec
from .convert import convert
from .modules import GRU, LSTM, RNN, Recurrent
from .pyramid import PyramidGRU, PyramidLSTM

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "Recurrent",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "PyramidLSTM",
    "PyramidGRU",
    "convert",
    "functional",
    "use_backend",
    "available",
    "report",
    "CellSpec",
]
