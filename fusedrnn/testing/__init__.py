"""Correctness comparison of fusedrnn backends: the float64 reference and torch.nn as oracles.

For people writing a backend (or changing one)::

    import fusedrnn.testing as ft
    report = ft.compare_backend("mybackend", cells=["lstm", "gru"], shapes=[(7, 5, 3, 37)])
    print(report)                               # worst error per output / gradient, pass or fail
    ft.assert_close_to_reference("mybackend")   # the same, raising AssertionError on any failure

``python -m fusedrnn.check`` runs the same comparison over the whole grid and
prints it as a table.

What is compared.  A :class:`Case` is one layer-direction problem: a cell
variant (:data:`VARIANTS`), a layout option (:data:`LAYOUTS`: padded or packed
with unsorted lengths, forward or reverse, with or without bias; the default
grid takes :data:`OPTIONS`) and a :class:`Shape`, optionally a projection size
and fixed packed lengths.  Its inputs (:func:`make_problem`) are fresh random
numbers (never zeros), drawn in float64 from a seed derived from the case's id
(or given), then rounded to the dtype under test, so every computation starts
from the same values.  This is the one case generator of the project's tests:
tests that call a backend or an op directly take the same data as a
:class:`LayerCase` (:func:`layer_case`: packed rows, ``batch_sizes``, the
weights, in a dtype on a device), and :meth:`Checker.check` runs any layer
function (``layer=``) against the oracles.  Each run
returns the outputs ``out``, ``h_n``, ``c_n`` and, for a fixed random upstream
gradient of all three, the gradient of every input (``grad_x``, ``grad_h0``,
``grad_c0``, ``grad_w_ih`` ... ``grad_w_proj``), so every gradient the
backend's backward writes is checked.

The oracles, both in float64 on the same rounded inputs:

* ``reference``: autograd through :func:`fusedrnn.reference.sequence_forward`
  (independent of every hand-written backward, the reference backend's included);
* ``torch.nn``: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with the weights copied in,
  for the variants torch has (not peepholes, not GRU ``reset_before``); the
  reverse direction is the reverse half of a bidirectional module.

Error measure: ``max_abs = max |actual - expected|`` and
``rel = max_abs / max |expected|`` (max-abs over max-magnitude, i.e. the
infinity-norm relative error of the whole tensor; a NaN or inf anywhere makes
it inf).  Tolerances on ``rel`` (:func:`tolerance`):

* float64: 1e-10; float32: 1e-5;
* float16 / bfloat16: the FlashAttention rule, at most twice the error of a
  baseline computation in the same dtype (the reference backend, by default)
  against the same oracle, plus one unit roundoff of the dtype;
* a float32 baseline loosens the bound to twice the baseline's error where that
  is larger (the benchmark's check at long sequences uses torch.nn in float32).

:func:`error_row` applies the rule to one tensor (e.g. a workspace), and
:meth:`CaseOutcome.assert_passed` turns an outcome into a test's assertion.
"""

from __future__ import annotations

# the harness's names, from the modules that define them (grid: cases; runs: problems and the runs that
# give comparable results; tolerance: errors and the rule; checker: comparing backends)
from .checker import (ORACLES, CaseOutcome, Checker, ErrorRow, Report, as_dtype, assert_close_to_reference,
                      compare_backend, compare_backends, default_device, default_dtypes, error_row, grid, module_cases)
from .grid import (DEFAULT_SHAPES, LAYOUTS, MODULE_LAYERS, MODULE_VARIANTS, OPTIONS, SMALL_SHAPE, VARIANTS, Case,
                   ModuleCase, Option, Shape, Variant, cases, kernel_variants, layout_name, projection_size,
                   variant_of)
from .runs import (INPUTS, OUTPUTS, QUANTITIES, TORCH_NAMES, LayerCase, LayerFn, Problem, Results, backend_layer,
                   layer_case, make_module_problem, make_problem, modules_available, quantity_of, reference_layer,
                   run_layer, run_module, run_torch, torch_module)
from .tolerance import DOCUMENTED_TOLERANCE, LOW_PRECISION, UNIT_ROUNDOFF, dtype_name, error, tolerance, tolerance_rule

__all__ = [
    "LAYOUTS",
    "OPTIONS",
    "ORACLES",
    "VARIANTS",
    "Case",
    "CaseOutcome",
    "LayerCase",
    "ModuleCase",
    "Checker",
    "ErrorRow",
    "Report",
    "Shape",
    "assert_close_to_reference",
    "cases",
    "kernel_variants",
    "compare_backend",
    "compare_backends",
    "default_device",
    "default_dtypes",
    "dtype_name",
    "error",
    "error_row",
    "grid",
    "layer_case",
    "make_problem",
    "module_cases",
    "tolerance",
]

