"""Which backend runs a call, and backends registered from outside fusedrnn.

Precedence, most specific first: the ``backend=`` argument, the innermost
``fusedrnn.backends.use_backend`` context, the ``FUSEDRNN_BACKEND`` environment
variable, then ``"auto"``.  The test backends below wrap the reference and
count the calls that reach them, so a test sees which one ran.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn import backends, functional
from fusedrnn.backends.reference import ReferenceBackend

#: (backend name, "forward" or "backward") -> number of calls
CALLS: collections.Counter = collections.Counter()

UNAVAILABLE_REASON = "simulated: this machine has no such accelerator"
UNSUPPORTED_REASON = "simulated: float64 is not supported"


class _Counting(ReferenceBackend):
    """The reference backend, counting its calls (the registry builds the instance, so the count is global)."""

    def forward(self, *args, **kwargs):
        CALLS[self.name, "forward"] += 1
        return super().forward(*args, **kwargs)

    def backward(self, *args, **kwargs):
        CALLS[self.name, "backward"] += 1
        return super().backward(*args, **kwargs)


def _counting(class_name: str, name: str) -> type:
    """A counting backend registered as ``name``, a module attribute ``class_name`` (the registry imports it)."""
    return type(class_name, (_Counting,), {"name": name, "__module__": __name__})


ExplicitBackend = _counting("ExplicitBackend", "test_explicit")
OuterContextBackend = _counting("OuterContextBackend", "test_outer_context")
InnerContextBackend = _counting("InnerContextBackend", "test_inner_context")
EnvironmentBackend = _counting("EnvironmentBackend", "test_environment")
PreferredBackend = _counting("PreferredBackend", "test_preferred")


class UnavailableBackend(_Counting):
    name = "test_unavailable"

    def availability(self):
        return UNAVAILABLE_REASON


class NoFloat64Backend(_Counting):
    name = "test_no_float64"

    def unsupported(self, cell, x, weights):
        return UNSUPPORTED_REASON if x.dtype == torch.float64 else None


class WrongBackend(_Counting):
    """A subtly broken backend: every output off by one part in a million."""

    name = "test_wrong"

    def forward(self, *args, **kwargs):
        result = super().forward(*args, **kwargs)
        return result._replace(out=result.out * (1 + 1e-6))


TEST_BACKENDS = [
    ExplicitBackend,
    OuterContextBackend,
    InnerContextBackend,
    EnvironmentBackend,
    PreferredBackend,
    UnavailableBackend,
    NoFloat64Backend,
    WrongBackend,
]


def _target(cls) -> str:
    # this module's own name, however pytest imported it, so the registry's import finds it
    return f"{__name__}:{cls.__name__}"


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """The test backends registered (none preferred by auto), and the registry as it was afterwards."""
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    saved_registry = dict(backends._REGISTRY)
    saved_preference = {device: list(order) for device, order in backends.AUTO_PREFERENCE.items()}
    saved_instances = dict(backends._instances)
    saved_errors = dict(backends._import_errors)
    saved_warned = set(backends._warned)
    CALLS.clear()
    for cls in TEST_BACKENDS:
        backends.register(cls.name, _target(cls))
    yield
    # in place: other modules may hold references to these objects
    for current, saved in [
        (backends._REGISTRY, saved_registry),
        (backends.AUTO_PREFERENCE, saved_preference),
        (backends._instances, saved_instances),
        (backends._import_errors, saved_errors),
    ]:
        current.clear()
        current.update(saved)
    backends._warned.clear()
    backends._warned.update(saved_warned)


def run_layer(case, backend=None):
    """One layer-direction through the named functional wrapper of the case's cell family."""
    w = case.weights
    common = dict(batch_sizes=case.batch_sizes, reverse=case.reverse, backend=backend)
    if case.cell.family == "lstm":
        return functional.lstm_layer(case.x, case.h0, case.c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                                     w_peep=w.w_peep, w_proj=w.w_proj, **common)
    if case.cell.family == "gru":
        return functional.gru_layer(case.x, case.h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                                    reset_after=case.cell.mode == "reset_after", **common)
    if case.cell.family.startswith("layer_norm"):  # the gains and shifts by name, from w_extra's layout
        named = case.cell.split_extra(w.w_extra, w.w_hh.shape[0] // case.cell.gates)
        wrapper = getattr(functional, f"{case.cell.family}_layer")
        states = (case.h0, case.c0) if case.cell.has_cell_state else (case.h0,)
        return wrapper(case.x, *states, w.w_ih, w.w_hh, w.b_ih, w.b_hh, **named, **common)
    if case.cell.family == "slstm":  # c, n and m by name, from the layer's cell state; back as one
        out, h_n, *rest = functional.slstm_layer(case.x, case.h0, *case.c0.chunk(3, dim=-1), w.w_ih, w.w_hh, w.b_ih,
                                                 w.b_hh, **common)
        return out, h_n, torch.cat(rest, dim=-1)
    if case.cell.family == "indrnn":
        return functional.indrnn_layer(case.x, case.h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                                       nonlinearity=case.cell.mode, **common)
    return functional.rnn_layer(case.x, case.h0, w.w_ih, w.w_hh, w.b_ih, w.b_hh,
                                nonlinearity=case.cell.mode, **common)


def small_case(variant="lstm", dtype=torch.float64, packed=False) -> ft.LayerCase:
    """Odd sizes that match no block size; packed: unsorted lengths up to 4 steps."""
    return ft.layer_case(ft.Case(variant, ft.Shape(T=4 if packed else 1, B=5, I=3, H=37),
                                 "packed" if packed else "padded"), dtype)


def ran(name) -> int:
    return CALLS[name, "forward"]


def test_explicit_argument_beats_context_and_environment(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", EnvironmentBackend.name)
    with backends.use_backend(OuterContextBackend.name):
        run_layer(small_case(), backend=ExplicitBackend.name)
    assert ran(ExplicitBackend.name) == 1
    assert ran(OuterContextBackend.name) == ran(EnvironmentBackend.name) == 0


def test_innermost_context_beats_outer_context_and_environment(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", EnvironmentBackend.name)
    case = small_case()
    with backends.use_backend(OuterContextBackend.name):
        with backends.use_backend(InnerContextBackend.name):
            run_layer(case)
        run_layer(case)  # the outer context is back in force
    run_layer(case)  # and outside both, the environment
    assert ran(InnerContextBackend.name) == ran(OuterContextBackend.name) == ran(EnvironmentBackend.name) == 1


def test_auto_argument_defers_to_context():
    with backends.use_backend(OuterContextBackend.name):
        run_layer(small_case(), backend="auto")
    assert ran(OuterContextBackend.name) == 1


def test_environment_variable_is_honoured(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", EnvironmentBackend.name)
    run_layer(small_case())
    assert ran(EnvironmentBackend.name) == 1


def test_registered_backend_preferred_by_auto_runs_without_being_named():
    backends.register(PreferredBackend.name, _target(PreferredBackend), prefer_for=["cpu"])
    run_layer(small_case())
    assert ran(PreferredBackend.name) == 1
    assert PreferredBackend.name in backends.available()


def test_auto_passes_over_unavailable_backend_warning_once_with_the_reason():
    backends.register(UnavailableBackend.name, _target(UnavailableBackend), prefer_for=["cpu"])
    case = small_case()
    expected = run_layer(case, backend="reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [run_layer(case) for _ in range(2)]
    naming_reason = [w for w in caught if issubclass(w.category, RuntimeWarning) and UNAVAILABLE_REASON in str(w.message)]
    assert len(naming_reason) == 1, [str(w.message) for w in caught]
    assert ran(UnavailableBackend.name) == 0
    for out in outputs:
        torch.testing.assert_close(out.out, expected.out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("how", ["argument", "context", "environment"])
def test_unknown_backend_raises_value_error_listing_the_backends(how, monkeypatch):
    with pytest.raises(ValueError, match=r"no_such_backend.*'reference'"):
        if how == "argument":
            run_layer(small_case(), backend="no_such_backend")
        elif how == "context":
            with backends.use_backend("no_such_backend"):
                pass
        else:
            monkeypatch.setenv("FUSEDRNN_BACKEND", "no_such_backend")
            run_layer(small_case())


def test_unavailable_backend_raises_runtime_error_naming_why():
    with pytest.raises(RuntimeError, match=UNAVAILABLE_REASON):
        run_layer(small_case(), backend=UnavailableBackend.name)
    with pytest.raises(RuntimeError, match=UNAVAILABLE_REASON):
        backends.get(UnavailableBackend.name)
    assert UnavailableBackend.name not in backends.available()
    assert f"{UnavailableBackend.name}: unavailable: {UNAVAILABLE_REASON}" in backends.report()


def test_backend_that_cannot_run_these_tensors_raises_runtime_error_naming_why():
    with pytest.raises(RuntimeError, match=UNSUPPORTED_REASON):
        run_layer(small_case(dtype=torch.float64), backend=NoFloat64Backend.name)
    run_layer(small_case(dtype=torch.float32), backend=NoFloat64Backend.name)
    assert ran(NoFloat64Backend.name) == 1


def test_backend_whose_module_does_not_import_is_unavailable_with_the_import_error():
    backends.register("test_missing_module", "fusedrnn_tests_no_such_module:Backend")
    assert "fusedrnn_tests_no_such_module" in backends.unavailable_reason("test_missing_module")
    with pytest.raises(RuntimeError, match="fusedrnn_tests_no_such_module"):
        run_layer(small_case(), backend="test_missing_module")


#: every cell, without the LSTM extras
CELLS = [name for name, v in ft.VARIANTS.items() if not (v.peephole or v.projection)]


def outputs_and_grads(case, backend):
    """Outputs, final states and the gradients of every input for the case's upstream gradients."""
    case = case.requiring_grad()
    outputs = [t for t in run_layer(case, backend=backend) if t is not None]
    loss = sum((t * g).sum() for t, g in zip(outputs, case.upstream))
    return outputs + list(torch.autograd.grad(loss, case.differentiable()))


@pytest.mark.parametrize("packed", [False, True], ids=["padded-T1", "packed-unsorted"])
@pytest.mark.parametrize("cell", CELLS)
def test_selected_backend_runs_forward_and_backward_with_reference_numbers(cell, packed):
    """The chosen backend gets both ops of a training step, and its results reach the caller unchanged."""
    case = small_case(cell, packed=packed)
    expected = outputs_and_grads(case, "reference")
    actual = outputs_and_grads(case, ExplicitBackend.name)
    # a cell without a hand-written backward (one registered with its reference step only) is differentiated
    # by autograd through that step, in the ops' autograd formula: no backend's backward runs
    backward_calls = 1 if case.cell.record.hand_written_backward else 0
    assert CALLS[ExplicitBackend.name, "forward"] == 1 and CALLS[ExplicitBackend.name, "backward"] == backward_calls
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_comparison_with_reference_catches_a_wrong_backend():
    """A sanity check that these comparisons can fail: a backend off by 1e-6 relative is caught."""
    case = small_case()
    expected = run_layer(case, backend="reference")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(run_layer(case, backend=WrongBackend.name).out, expected.out,
                                   rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run_layer(case, backend=ExplicitBackend.name).out, expected.out,
                               rtol=1e-10, atol=1e-10)
