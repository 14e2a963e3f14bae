"""What the Triton kernel test modules share: where the kernels can run, and the
assertion on a :class:`fusedrnn.testing.Checker` outcome."""

from __future__ import annotations

import os

import pytest
import torch

#: the kernels run on CPU tensors through Triton's interpreter (else on a GPU)
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu" if INTERPRETING else "cuda")


def skip_module_unless_kernels_run() -> None:
    """Called at a test module's import: skip it (saying why) without a GPU or the interpreter, or without Triton."""
    if not (INTERPRETING or torch.cuda.is_available()):
        pytest.skip("the Triton kernels need a CUDA GPU or the interpreter: run "
                    "TRITON_INTERPRET=1 python -m pytest tests -m triton", allow_module_level=True)
    pytest.importorskip("triton", reason="Triton is not installed")


def assert_passed(outcome) -> None:
    """Every row of a Checker outcome within its tolerance, and at least one gradient compared."""
    assert outcome.skipped is None, outcome.skipped
    assert outcome.crashed is None, outcome.crashed
    failed = [f"{r.quantity} vs {r.oracle}: rel {r.rel:.3g} > {r.tolerance:.3g}" for r in outcome.rows if not r.passed]
    assert not failed, f"{outcome.case.id} {outcome.dtype}: " + "; ".join(failed)
    assert any(r.quantity.startswith("grad_") for r in outcome.rows), "no gradient was compared"
