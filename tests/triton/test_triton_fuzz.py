"""The differential properties of tests/test_fuzz_differential.py for the ``triton`` backend.

Same configurations, oracles and tolerances (tests/fuzz_cases.py), float32
only (the Triton kernels run float32, float16 and bfloat16), under Triton's
interpreter on CPU tensors::

    TRITON_INTERPRET=1 python -m pytest tests/triton/test_triton_fuzz.py -m triton

The interpreter runs each kernel program in Python, so the sizes are kept
small and the example counts low; ``make fuzz`` multiplies them.  Each
property runs under both forward kernels the interpreter has: ``auto`` picks
the persistent kernel for hidden sizes up to 64 without projection, and
``per_step`` forces the one-launch-per-step kernel.
"""

from __future__ import annotations


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")]

from triton_support import INTERPRETING, skip_module_unless_kernels_run

skip_module_unless_kernels_run()

from fuzz_cases import backend_setting, cell_configs, check_cell, check_module, examples, module_configs  # noqa: E402

if torch.cuda.is_available() and not INTERPRETING:
    # the harness builds its tensors on the CPU; on a GPU the triton backend needs CUDA tensors
    pytest.skip("these properties run the Triton kernels on CPU tensors under TRITON_INTERPRET=1; "
                "on a GPU, tests/triton/test_triton_backend.py covers them", allow_module_level=True)

# small enough for the interpreter (one example costs about as much as T x layers x directions launches)
LIMITS = dict(T=5, B=5, I=6, H=12, layers=2)
FORWARD = ["auto", "per_step"]
F32 = (torch.float32,)


@pytest.mark.parametrize("forward", FORWARD)
@examples(ci=10)
@given(cfg=module_configs(dtypes=F32, limits=LIMITS))
def test_modules_match_torch_nn(forward, cfg):
    with backend_setting("triton", "forward_strategy", forward):
        check_module(cfg, "triton")


@examples(ci=4)
@given(cfg=module_configs(dtypes=F32, T=st.just(0), layouts=("padded", "unbatched"), limits=LIMITS))
def test_zero_length_sequence_like_torch_nn(cfg):
    check_module(cfg, "triton")


@examples(ci=4)
@given(cfg=module_configs(dtypes=F32, B=st.just(0), layouts=("padded",), limits=LIMITS))
def test_empty_batch_like_torch_nn(cfg):
    check_module(cfg, "triton")


@examples(ci=4)
@given(cfg=module_configs(dtypes=F32, edit_outputs=st.just(True), limits=LIMITS))
def test_outputs_editable_in_place(cfg):
    check_module(cfg, "triton")


@pytest.mark.parametrize("forward", FORWARD)
@examples(ci=10)
@given(cfg=cell_configs(dtypes=F32, limits=LIMITS))
def test_cells_match_torch_nn(forward, cfg):
    with backend_setting("triton", "forward_strategy", forward):
        check_cell(cfg, "triton")


@examples(ci=4)
@given(cfg=cell_configs(dtypes=F32, empty=True, limits=LIMITS))
def test_empty_cells_like_torch_nn(cfg):
    check_cell(cfg, "triton")
