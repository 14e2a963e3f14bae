"""The cell table (fusedrnn/cells.py): one record per cell, read by every layer;
its one C++ copy agrees with it; backends say which cells they run, and "auto"
falls back past a backend without kernels for a cell."""

from __future__ import annotations

import warnings

import pytest
import torch

import fusedrnn
from fusedrnn import backends, cells
from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellRecord, CellSpec, all_specs


def test_every_record_is_a_spec_with_its_facts():
    for spec in all_specs():
        record = cells.CELLS[(spec.family, spec.mode)]
        assert spec.record is record
        assert spec.gates == len(record.gates) > 0
        assert spec.workspace_blocks == len(record.workspace)
        assert spec.has_cell_state == ("c" in record.states)


def test_each_family_has_one_default_mode():
    for family in cells.families():
        defaults = [r for r in cells.CELLS.values() if r.family == family and r.default]
        assert len(defaults) == 1, family
        assert cells.default_mode(family) == defaults[0].mode


def test_the_torch_twins_are_torch_classes_with_the_same_mode():
    """The record's torch mode is what the torch.nn class reports (the drop-in modules copy it)."""
    for spec in all_specs():
        twin = cells.torch_twin(spec)
        if twin is None:
            continue
        name, kwargs = twin
        module = getattr(torch.nn, name)(3, 4, **kwargs)
        assert module.mode == spec.record.torch_mode
        assert module.weight_hh_l0.shape[0] == spec.gates * 4


#: the cells with kernels in every backend: the drop-in classes' and the C++ copy's (the others, IndRNN and
#: the layer-normalised cells, have the cpu backend's kernels only)
BUILT_IN_SPECS = [spec for spec in all_specs() if (spec.family, spec.mode) in cells.BUILT_IN_CELLS]


def test_drop_in_modules_report_the_records_torch_mode():
    for spec in BUILT_IN_SPECS:
        module = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[spec.family]
        kwargs = {"lstm": {}, "gru": {"reset_after": spec.mode == "reset_after"},
                  "rnn": {"nonlinearity": spec.mode}}[spec.family]
        assert module(3, 4, **kwargs).mode == spec.record.torch_mode


def extension_op(name: str):
    """An op of the C++ extension (skipped with the reason where it is not built; `make test` requires it)."""
    from fusedrnn import _extension

    if _extension.load() is None:
        pytest.skip(f"the C++ extension is not built: {_extension.load_error()}")
    return getattr(torch.ops.fusedrnn_C, name)


#: the cells the C++ copy knows: the built-in ones and those with kernels in a C++ backend (IndRNN, the
#: layer-normalised cells and sLSTM: cpu)
CPP_SPECS = BUILT_IN_SPECS + [CellSpec(*key) for key in
                              sorted(cells.INDRNN_CELLS | cells.LAYER_NORM_CELLS | cells.SLSTM_CELLS)]


@pytest.mark.parametrize("spec", CPP_SPECS, ids=str)
def test_the_cpp_copy_agrees(spec):
    cell_layout = extension_op("cell_layout")
    assert cell_layout(spec.family, spec.mode) == (spec.gates, spec.workspace_blocks, spec.has_cell_state)


def test_the_cpp_copy_rejects_what_the_table_lacks():
    with pytest.raises(RuntimeError, match="mode of a gru cell"):
        extension_op("cell_layout")("gru", "minimal")
    with pytest.raises(ValueError, match="unknown mode 'minimal'"):
        CellSpec("gru", "minimal")


# ----------------------------------------------------------------------------
# a cell registered from outside the library
# ----------------------------------------------------------------------------


@pytest.fixture
def toy_cell():
    """An Elman cell under a new mode, registered for one test and removed after."""
    record = cells.register(CellRecord("rnn", "toy", gates=("a",), workspace=()))
    try:
        yield CellSpec("rnn", "toy")
    finally:
        del cells.CELLS[(record.family, record.mode)]


def test_registering_a_cell_twice_or_a_second_default_is_refused(toy_cell):
    with pytest.raises(ValueError, match="registered already"):
        cells.register(toy_cell.record)
    with pytest.raises(ValueError, match="default mode already"):
        cells.register(CellRecord("rnn", "other", gates=("a",), workspace=(), default=True))


#: the cells beyond the built-in ones that each fused backend has kernels for (the others: none)
EXTRA_KERNELS = {"cpu": cells.INDRNN_CELLS | cells.LAYER_NORM_CELLS | cells.SLSTM_CELLS, "cuda": cells.INDRNN_CELLS,
                 "triton": cells.INDRNN_CELLS | cells.LAYER_NORM_CELLS | cells.SLSTM_CELLS}


def test_backends_declare_the_cells_they_run(toy_cell):
    assert backends.get("reference").runs(toy_cell)
    for name in backends.names():
        backend = backends._instance(name)
        assert all(backend.runs(spec) for spec in BUILT_IN_SPECS), name
        if name != "reference":
            assert not backend.runs(toy_cell), name
            # the library's cells without kernels here: auto sends them to the reference backend
            extra = {spec for spec in all_specs() if spec not in BUILT_IN_SPECS and backend.runs(spec)}
            assert extra == {CellSpec(*key) for key in EXTRA_KERNELS.get(name, ())}, name
            assert backends.declared_cells(name) == backend.cells, name
        else:
            assert all(backend.runs(spec) for spec in all_specs()), name
            assert backends.declared_cells(name) is None


def test_kernel_variants_follow_the_backends_cells():
    """Without a backend, the built-in cells' variants (every fused backend's tests); with one, its own."""
    from fusedrnn import testing as ft

    everywhere = set(ft.kernel_variants())
    assert everywhere == {n for n, v in ft.VARIANTS.items() if (v.cell.family, v.cell.mode) in cells.BUILT_IN_CELLS}
    indrnn, layer_norm = {"indrnn-relu", "indrnn-tanh"}, {"layer-norm-lstm", "layer-norm-gru"}
    assert set(ft.kernel_variants("cpu")) == everywhere | indrnn | layer_norm | {"slstm"}
    assert set(ft.kernel_variants("cuda")) == everywhere | indrnn
    assert set(ft.kernel_variants("triton")) == everywhere | indrnn | layer_norm | {"slstm"}
    assert set(ft.kernel_variants("reference")) == set(ft.VARIANTS)


def test_auto_falls_back_past_a_backend_without_the_cell(toy_cell, monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())  # the warning is once per process: as if this were the first
    x = torch.randn(3, 2, 5)
    weights = LayerWeights(torch.randn(4, 5), torch.randn(4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = backends.resolve(None, toy_cell, x, weights)
    assert chosen.name == "reference"
    if "cpu" in backends.available():  # the cpu backend was passed over, and the warning says why
        assert any("no kernels for the rnn[toy] cell" in str(w.message) for w in caught)


def test_a_named_backend_without_the_cell_raises_naming_it(toy_cell):
    if "cpu" not in backends.available():
        pytest.skip("the cpu backend is unavailable here: " + str(backends.unavailable_reason("cpu")))
    with pytest.raises(RuntimeError, match="'cpu' cannot run this call: it has no kernels for the rnn\\[toy\\]"):
        backends.resolve("cpu", toy_cell, torch.randn(3, 2, 5), LayerWeights(torch.randn(4, 5), torch.randn(4, 4)))
