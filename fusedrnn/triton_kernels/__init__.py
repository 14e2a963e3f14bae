"""Triton kernels of the ``triton`` backend (importing this package imports Triton).

* :mod:`.cell_math`: the ``@triton.jit`` gate functions and cell epilogues
  that every kernel shares, so the interpreter-tested kernels and the
  GPU-only ones compute the same formulas;
* :mod:`.recurrence`: the kernels (per-step forward, persistent small-H
  forward, persistent large-H forward with a grid barrier, per-step backward),
  one template per purpose with the cell chosen by ``tl.constexpr``;
* :mod:`.diagonal`: IndRNN's kernels and driver (no product per step: one
  launch per sequence, each program its own units through every step);
* :mod:`.layer_norm`: the layer-normalised LSTM and GRU (a program per whole
  rows, the row statistics inside it), kernels and driver;
* :mod:`.slstm`: sLSTM's gating (after a product by heads), kernels and driver;
* :mod:`.sequence`: the sequence drivers that call them (one layer-direction,
  whole sequence), strategy choice and autotuning;
* :mod:`.graphs`: CUDA-graph capture and replay of per-step sequences;
* :mod:`.concurrent_grid`: under the interpreter, a launch with every
  program of the grid alive at once (a thread each), for the kernel whose
  programs wait for each other at a grid barrier.

``TRITON_INTERPRET=1`` must be set before this package is imported for the
kernels to run on CPU tensors through Triton's interpreter (docs/design.md section 9).
"""
