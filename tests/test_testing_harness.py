"""fusedrnn.testing as the tests use it: one case generator, and a checker that can fail.

The CUDA and Triton tests rely on these: :func:`fusedrnn.testing.layer_case` hands a
direct backend call the same numbers every :func:`fusedrnn.testing.run_layer` run sees,
and :meth:`fusedrnn.testing.Checker.check` with ``layer=`` catches a wrong layer function.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn.testing as ft
from fusedrnn import reference

SHAPE = ft.Shape(T=5, B=4, I=3, H=7)


@pytest.mark.parametrize("option", list(ft.LAYOUTS))
def test_layer_case_holds_what_run_layer_passes_to_the_layer(option):
    """Packed rows sorted by length, states in that order, weights and direction: bit for bit."""
    case = ft.Case("lstm-peephole-proj", SHAPE, option, projection=2)
    seen = {}

    def spy(cell, x, h0, c0, weights, batch_sizes, reverse):
        seen.update(x=x, h0=h0, c0=c0, weights=weights, batch_sizes=batch_sizes, reverse=reverse)
        return ft.reference_layer(cell, x, h0, c0, weights, batch_sizes, reverse)

    ft.run_layer(ft.make_problem(case, torch.float32), spy, torch.float32, "cpu")
    layer = ft.layer_case(case, torch.float32)
    for name in ("x", "h0", "c0"):
        assert torch.equal(seen[name].detach(), getattr(layer, name)), name
    for got, want in zip(seen["weights"], layer.weights):
        assert (got is None) == (want is None) and (got is None or torch.equal(got.detach(), want))
    assert seen["reverse"] == layer.reverse == ft.LAYOUTS[option].reverse
    assert (seen["batch_sizes"] is None) == (layer.batch_sizes is None) == (not ft.LAYOUTS[option].packed)
    if layer.batch_sizes is not None:
        assert torch.equal(seen["batch_sizes"], layer.batch_sizes)
    assert layer.upstream[0].shape == reference.sequence_forward(*layer.args()).out.shape


def test_case_ids_and_checks():
    """Ids without the new fields are as before (the seed of every existing case stays); bad fields are refused."""
    assert ft.Case("lstm", (7, 5, 3, 37)).id == "lstm/padded/T7 B5 I3 H37"
    assert ft.Case("lstm-proj", (7, 5, 3, 37), "packed", projection=4, lengths=(7, 1, 2, 3, 4)).id == \
        "lstm-proj/packed/T7 B5 I3 H37 P4 L7,1,2,3,4"
    assert ft.layer_case(ft.Case("gru", (3, 3, 2, 4), "packed", lengths=(3, 1, 3))).batch_sizes.tolist() == [3, 2, 2]
    with pytest.raises(ValueError, match="projection"):
        ft.Case("lstm", SHAPE, projection=2)
    with pytest.raises(ValueError, match="lengths"):
        ft.Case("gru", SHAPE, "padded", lengths=(5, 5, 5, 5))
    with pytest.raises(ValueError, match="lengths"):
        ft.Case("gru", SHAPE, "packed", lengths=(4, 4, 4, 4))  # none of length T
    assert ft.make_problem(ft.Case("gru", SHAPE), seed=3).inputs["x"].equal(
        ft.make_problem(ft.Case("rnn-tanh", SHAPE), seed=3).inputs["x"])


def test_checker_with_a_layer_function_fails_a_wrong_one():
    checker = ft.Checker("cpu")
    case = ft.Case("gru", SHAPE, "packed-reverse")

    def off(cell, *args):  # every output one part in 10^4 too large
        out, h_n, c_n = ft.reference_layer(cell, *args)
        return out * (1 + 1e-4), h_n, c_n

    checker.check("reference", case, torch.float32, layer=ft.reference_layer).assert_passed()
    outcome = checker.check("reference", case, torch.float32, layer=off)
    with pytest.raises(AssertionError, match="out vs reference"):
        outcome.assert_passed()
    skipped = ft.CaseOutcome("reference", case, torch.float32, skipped="no such device")
    with pytest.raises(AssertionError, match="skipped: no such device"):
        skipped.assert_passed()


def test_several_baselines_give_the_tightest_bound():
    expected = torch.linspace(-1, 1, 11, dtype=torch.float64)
    near, far = expected + 1e-3, expected + 1e-2
    row = ft.error_row("out", "reference", expected, expected, torch.bfloat16, [far, near])
    assert row.tolerance == ft.tolerance(torch.bfloat16, ft.error(near, expected)[1])
    assert row.tolerance < ft.tolerance(torch.bfloat16, ft.error(far, expected)[1])
    checker = ft.Checker("cpu")
    outcome = checker.check("reference", ft.Case("rnn-relu", SHAPE), torch.bfloat16,
                            baseline=("reference", ft.reference_layer))
    outcome.assert_passed()
    assert "min(reference, reference_layer)" in outcome.rule
