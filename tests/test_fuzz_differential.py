"""Property-based differential tests: fusedrnn against torch.nn on random configurations.

hypothesis draws the cell (LSTM, LSTM with projection, GRU, RNN tanh/relu, and
the extras: peephole LSTM, GRU reset_after=False), the options (layers 1-3,
bidirectional, batch_first, bias), the sizes (odd ones, 1, and the empty ones
torch.nn accepts), the input layout (padded, packed with unsorted lengths,
unbatched), initial states or none, and float32 or float64; each example
compares outputs, final states and every gradient with torch.nn's twin (the
harness and the tolerances are in tests/fuzz_cases.py).

Backends ``reference`` and ``cpu`` (each of its strategies) run here; the
``triton`` backend runs the same properties in tests/triton/test_triton_fuzz.py.
``make test`` runs the ``ci`` profile (fixed examples); ``make fuzz`` the
``fuzz`` profile (fresh random examples, many more of them).

Degenerate sizes (T=0, B=0, empty cells) and in-place edits of the outputs are
properties of their own, so a failure there does not stop hypothesis from
searching the ordinary configurations (it stops at the first failing example).
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fusedrnn
from fuzz_cases import backend_setting, cell_configs, check_cell, check_module, examples, module_configs

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"

# (backend, cpu strategy): every path of the cpu backend's per-step product ("auto" chooses by size)
RUNS = [("reference", None), ("cpu", "auto"), ("cpu", "gemm"), ("cpu", "fused"), ("cpu", "folded")]
RUN_IDS = ["reference", "cpu-auto", "cpu-gemm", "cpu-fused", "cpu-folded"]
# the degenerate properties take one cpu run: they end before the strategies differ
MAIN_RUNS = [("reference", None), ("cpu", "auto")]


def selected(backend: str, strategy):
    """The backend (strategy set, restored after), or a skip where the cpu kernels are not built."""
    why = fusedrnn.backends.unavailable_reason(backend)
    if why is not None and not REQUIRED:
        pytest.skip(f"backend {backend!r} is not built in this checkout: {why}")
    if strategy is None:
        return contextlib.nullcontext()
    return backend_setting(backend, "strategy", strategy)


@pytest.mark.parametrize("backend,strategy", RUNS, ids=RUN_IDS)
@examples(ci=100)
@given(cfg=module_configs())
def test_modules_match_torch_nn(backend, strategy, cfg):
    with selected(backend, strategy):
        check_module(cfg, backend)


@pytest.mark.parametrize("backend,strategy", MAIN_RUNS, ids=RUN_IDS[:2])
@examples(ci=20)
@given(cfg=module_configs(T=st.just(0), layouts=("padded", "unbatched")))
def test_zero_length_sequence_like_torch_nn(backend, strategy, cfg):
    """torch.nn raises for T=0 (a packed sequence cannot have it): fusedrnn must raise alike."""
    with selected(backend, strategy):
        check_module(cfg, backend)


@pytest.mark.parametrize("backend,strategy", MAIN_RUNS, ids=RUN_IDS[:2])
@examples(ci=20)
@given(cfg=module_configs(B=st.just(0), layouts=("padded",)))
def test_empty_batch_like_torch_nn(backend, strategy, cfg):
    """torch.nn accepts B=0 (empty outputs, h_n = h0, zero gradients)."""
    with selected(backend, strategy):
        check_module(cfg, backend)


@pytest.mark.parametrize("backend,strategy", MAIN_RUNS, ids=RUN_IDS[:2])
@examples(ci=20)
@given(cfg=module_configs(edit_outputs=st.just(True)))
def test_outputs_editable_in_place(backend, strategy, cfg):
    """Models edit an RNN's outputs in place (out.relu_(), masked_fill_): neither an error nor a wrong gradient."""
    with selected(backend, strategy):
        check_module(cfg, backend)


@pytest.mark.parametrize("backend,strategy", RUNS, ids=RUN_IDS)
@examples(ci=60)
@given(cfg=cell_configs())
def test_cells_match_torch_nn(backend, strategy, cfg):
    with selected(backend, strategy):
        check_cell(cfg, backend)


@pytest.mark.parametrize("backend,strategy", MAIN_RUNS, ids=RUN_IDS[:2])
@examples(ci=20)
@given(cfg=cell_configs(empty=True))
def test_empty_cells_like_torch_nn(backend, strategy, cfg):
    """torch.nn's cells accept B=0, input_size=0 and hidden_size=0 (empty results, zero gradients)."""
    with selected(backend, strategy):
        check_cell(cfg, backend)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_instances_of_the_torch_nn_twin(name):
    """Code that dispatches on torch.nn's classes (isinstance(m, nn.LSTM): initialisers, pruning,
    quantisation, weight norm) must treat the drop-in replacement as its twin."""
    module = getattr(fusedrnn, name)(3, 4)
    assert isinstance(module, getattr(nn, name)), f"fusedrnn.{name} is not an instance of torch.nn.{name}"
    # and still a fusedrnn module (its forward, not torch.nn's)
    assert type(module).__module__.startswith("fusedrnn")


def test_the_harness_catches_a_wrong_gate():
    """The comparison is able to fail: a module whose forget-gate bias is off by 1e-3 (weights
    loaded, then one entry nudged) is rejected in float32 and float64."""
    from fuzz_cases import ModuleConfig, compare, module_data, module_oracles, run_module

    for dtype in (torch.float32, torch.float64):
        cfg = ModuleConfig("lstm", 2, True, False, True, T=5, B=3, I=4, H=6, proj_size=0, layout="packed",
                           with_state=True, dtype=dtype, seed=1)
        tensors = module_data(cfg, nn.LSTM(4, 6, **cfg.kwargs(extras=False)))
        behaviour, expected = module_oracles(cfg, tensors)
        nudged = dict(tensors, weights=dict(tensors["weights"]))
        nudged["weights"]["bias_hh_l1_reverse"] = nudged["weights"]["bias_hh_l1_reverse"].clone()
        nudged["weights"]["bias_hh_l1_reverse"][6] += 1e-3  # the first forget-gate entry
        actual = run_module(cfg, fusedrnn.LSTM(4, 6, dtype=dtype, backend="reference", **cfg.kwargs()), nudged, dtype)
        with pytest.raises(AssertionError, match=r"error \S+ > "):
            compare(cfg, behaviour, expected, actual)


def test_relu_kinks_are_recognised():
    """The float32 ReLU example make fuzz reported (a layer-1 reverse preactivation 1.3e-8 from 0:
    float32 and float64 take different branches, so the gradients cannot be judged) is below the
    kink threshold; an ordinary example is far above it, so the rejection is rare."""
    from fuzz_cases import KINK_THRESHOLD, ModuleConfig, build_module, module_data, relu_margin

    def margin(**changes):
        options = dict(variant="rnn-relu", num_layers=2, bidirectional=True, batch_first=False, bias=True, T=24,
                       B=25, I=29, H=51, proj_size=0, layout="padded", with_state=False, dtype=torch.float32,
                       seed=24)
        cfg = ModuleConfig(**dict(options, **changes))
        return relu_margin(cfg, module_data(cfg, build_module(cfg, "torch.nn", torch.float32)))

    assert margin() < KINK_THRESHOLD
    assert margin(T=5, B=3, H=6, layout="packed", with_state=True, seed=3) > 100 * KINK_THRESHOLD
