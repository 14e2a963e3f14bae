"""The ops a model's graph holds, ``fusedrnn::{family}_{forward,backward}`` (csrc/graph_ops.cpp, fusedrnn/ops.py).

They are defined by the extension library, so that a program exported with them runs where only
that library is loaded: a Python process that never imports fusedrnn, and a C++ process without
Python at all (an AOTInductor package run by tests/runtime/run_aoti_package.cpp).  A traced graph
names the backend "auto" (resolved where it runs) and keeps no training workspace when exported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, ops
from fusedrnn.cells import FAMILIES

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


@pytest.fixture(scope="module")
def library() -> str:
    """The extension library's path (the tests need it built: `make test` builds it)."""
    module = _extension.load()
    if module is None:
        pytest.skip(f"the extension is not built: {_extension.load_error()}")
    return module.__file__


def compiler():
    found = shutil.which("c++") or shutil.which("g++")
    if found is None:
        pytest.skip("needs a C++ compiler (for AOTInductor and the C++ runner)")
    return found


def exported_lstm(tmp_path, **options):
    """A 2-layer bidirectional LSTM exported with dynamic T and B, its input and output, saved in tmp_path."""
    torch.manual_seed(0)
    model = fusedrnn.LSTM(4, 6, num_layers=2, bidirectional=True, **options).eval()
    x = torch.randn(5, 3, 4)
    dims = {0: torch.export.Dim("T", min=2, max=512), 1: torch.export.Dim("B", min=2, max=512)}
    program = torch.export.export(model, (x,), dynamic_shapes=({**dims},))
    torch.save(x, tmp_path / "input.pt")
    return model, program, x


def graph_calls(program):
    return [node for node in program.graph.nodes if node.op == "call_function" and "fusedrnn" in str(node.target)]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that does not import fusedrnn (it asserts so itself)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, cwd=HERE)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


# ----------------------------------------------------------------------------
# one schema, the graph's arguments
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_the_python_schema_is_the_cpp_one(family, library):
    """fusedrnn/ops.py defines ops with csrc/include/fusedrnn/graph_schema.h's schema where C++ does not."""
    for direction, arguments in (("forward", ops._FORWARD_SCHEMA), ("backward", ops._BACKWARD_SCHEMA)):
        cpp = getattr(torch.ops.fusedrnn, f"{family}_{direction}").default._schema
        assert str(cpp) == str(torch._C.parse_schema(f"fusedrnn::{family}_{direction}{arguments}"))


def test_an_exported_graph_names_auto_and_keeps_no_workspace(tmp_path):
    """The backend is chosen where the program runs; an exported program is for inference."""
    _, program, _ = exported_lstm(tmp_path)
    calls = graph_calls(program)
    assert len(calls) == 4  # 2 layers x 2 directions
    for node in calls:
        assert node.args[12] == "auto" and node.args[13] is False, node.args


def test_a_backend_named_by_the_module_stays_in_the_graph(tmp_path):
    _, program, _ = exported_lstm(tmp_path, backend="reference")
    assert {node.args[12] for node in graph_calls(program)} == {"reference"}


def test_the_strategy_reaches_the_kernels(library):
    """backend "cpu": the compiled kernels run the call themselves, with the strategy asked for."""
    x, h0, c0 = torch.randn(5, 3, 4), torch.randn(3, 6), torch.randn(3, 6)
    w = [torch.randn(24, 4), torch.randn(24, 6), torch.randn(24), torch.randn(24)]
    args = (x, h0, c0, *w, None, None, None, False, "lstm")
    fused = torch.ops.fusedrnn.lstm_forward(*args, "cpu", False, "fused")
    gemm = torch.ops.fusedrnn.lstm_forward(*args, "cpu", False, "gemm")
    reference = torch.ops.fusedrnn.lstm_forward(*(t.double() if isinstance(t, torch.Tensor) else t for t in args),
                                                "reference", False)
    for a, b, r in zip(fused[:3], gemm[:3], reference[:3]):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.double(), r, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="strategy must be"):
        torch.ops.fusedrnn.lstm_forward(*args, "cpu", False, "sideways")


# ----------------------------------------------------------------------------
# without the Python package, without Python
# ----------------------------------------------------------------------------

def test_an_exported_program_runs_where_only_the_library_is_loaded(tmp_path, library):
    model, program, x = exported_lstm(tmp_path)
    torch.export.save(program, tmp_path / "program.pt2")
    torch.save(model(x)[0].detach(), tmp_path / "expected.pt")
    out = run_python(f"""
        import sys, torch
        torch.ops.load_library({library!r})
        program = torch.export.load({str(tmp_path / "program.pt2")!r})
        x, expected = torch.load({str(tmp_path / "input.pt")!r}), torch.load({str(tmp_path / "expected.pt")!r})
        actual = program.module()(x)[0]
        assert torch.equal(actual, expected), (actual - expected).abs().max()
        longer = program.module()(torch.randn(9, 7, 4))[0]  # T and B stayed dynamic
        assert longer.shape == (9, 7, 12), longer.shape
        bad = torch.ops.fusedrnn.lstm_forward
        try:
            bad(x[:, :, :4], torch.zeros(3, 6), torch.zeros(3, 6), torch.zeros(24, 4), torch.zeros(24, 6),
                None, None, None, None, None, False, "lstm", "triton")
        except RuntimeError as e:
            assert "need the Python package" in str(e), e
        else:
            raise AssertionError("backend 'triton' ran without the Python package")
        assert "fusedrnn" not in sys.modules
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_an_aoti_package_runs_in_a_process_without_python(tmp_path, library):
    """AOTInductor compiles the exported model; a C++ program (no Python linked or loaded) runs it."""
    cxx = compiler()
    runner = tmp_path / "run_aoti_package"
    include = os.path.join(TORCH_DIR, "include")
    lib = os.path.join(TORCH_DIR, "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", os.path.join(HERE, "runtime", "run_aoti_package.cpp"),
         f"-I{include}", f"-I{os.path.join(include, 'torch', 'csrc', 'api', 'include')}", f"-L{lib}",
         "-ltorch", "-ltorch_cpu", "-lc10", "-ldl", f"-Wl,-rpath,{lib}", "-o", str(runner)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    model, program, x = exported_lstm(tmp_path)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "lstm.pt2"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FUSEDRNN_"))}
    done = subprocess.run([str(runner), library, package, str(tmp_path / "input.pt"), str(tmp_path / "output.pt")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    torch.testing.assert_close(torch.load(tmp_path / "output.pt"), model(x)[0].detach(), rtol=1e-6, atol=1e-6)
    ldd = shutil.which("ldd")
    if ldd:  # nothing of Python's own library in the runner
        assert "libpython" not in subprocess.run([ldd, str(runner)], capture_output=True, text=True).stdout
