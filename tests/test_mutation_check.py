"""The mutation check's list (tests/mutation_check.py) against the current kernels: every
mutant's anchor must occur exactly once, so a kernel edit that stales the list fails
`make test` here, in seconds, instead of at the next `make mutation-check` (minutes)."""

from __future__ import annotations

import pytest

import mutation_check as mc


@pytest.mark.parametrize("mutant", mc.MUTANTS, ids=[m.name for m in mc.MUTANTS])
def test_anchor_occurs_exactly_once(mutant):
    text = (mc.REPO / mutant.file).read_text()
    assert text.count(mutant.search) == 1, (
        f"{mutant.name}: {mutant.file} has its search string {text.count(mutant.search)} times, not once; "
        f"update the mutant in tests/mutation_check.py to the kernel as it is now")


def test_names_are_unique():
    names = [m.name for m in mc.MUTANTS]
    assert len(names) == len(set(names))


def test_the_planted_text_differs():
    for m in mc.MUTANTS:
        assert m.search != m.replace, m.name
