"""The CUDA sources build without a GPU: every ``csrc/cuda/*.cu`` (and the CUDA
emulation's self-test kernels) with ``nvcc -c`` for sm_80 and sm_90, and the ATen wrapper ``csrc/cuda/*.cpp`` through a ``g++
-fsyntax-only`` pass against the installed torch's headers.

Compilation alone proves nothing about results: the ``gpu`` tests in
tests/test_cuda_backend.py are what validate the kernels (csrc/cuda/README.md).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(REPO_ROOT, "csrc", "cuda")
INCLUDE_DIR = os.path.join(REPO_ROOT, "csrc", "include")
#: the kernels, and the CUDA emulation's self-test kernels (csrc/emulation/selftest.cu:
#: what the emulator is shown to run must be CUDA that nvcc accepts)
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu"))) + [
    os.path.join(REPO_ROOT, "csrc", "emulation", "selftest.cu")]
WRAPPER_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cpp")))
#: the architectures setup.py builds by default (TORCH_CUDA_ARCH_LIST=8.0;9.0)
GENCODES = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
#: the nvcc flags setup.py passes, plus those torch's CUDAExtension adds to every .cu
#: (no implicit half/bfloat16 conversions or operators: the kernels must convert explicitly)
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
try:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS as _TORCH_NVCC_FLAGS
except ImportError:
    _TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                         "--expt-relaxed-constexpr"]
NVCC_FLAGS += list(_TORCH_NVCC_FLAGS)


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = os.path.join(home, "bin", "nvcc")
    return candidate if os.path.exists(candidate) else None


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (a CUDA toolkit) is not installed on this machine")


def _cuda_include_dir():
    """The toolkit's include folder (cuda_runtime_api.h), found from nvcc."""
    if NVCC is None:
        return None
    out = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True)
    for line in (out.stdout + out.stderr).splitlines():
        m = re.search(r'INCLUDES="([^"]*)"', line)
        if m:
            for flag in m.group(1).split():
                path = flag[2:].strip('"') if flag.startswith("-I") else None
                if path and os.path.exists(os.path.join(path, "cuda_runtime_api.h")):
                    return path
    for path in (os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "include"),
                 "/usr/local/cuda/include"):
        if os.path.exists(os.path.join(path, "cuda_runtime_api.h")):
            return path
    return None


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files under {CUDA_DIR}"
    assert WRAPPER_FILES, f"no ATen wrapper (.cpp) under {CUDA_DIR}"


# Headers a kernel file may include: the CUDA toolkit's, the C/C++ standard
# library's, and this project's (quoted, or <fusedrnn/...>).  No ATen, c10 or torch:
# the kernels must compile with bare nvcc (docs/design.md section 5).
_FRAMEWORK_HEADER = re.compile(r"^\s*#\s*include\s*[<\"](ATen|c10|torch|pybind11)/")


@pytest.mark.parametrize("path", CU_FILES + sorted(glob.glob(os.path.join(CUDA_DIR, "*.cuh"))),
                         ids=os.path.basename)
def test_kernel_sources_include_no_framework_headers(path):
    with open(path, encoding="utf-8") as f:
        bad = [line.strip() for line in f if _FRAMEWORK_HEADER.match(line)]
    assert not bad, f"{os.path.basename(path)} includes framework headers: {bad}"


@needs_nvcc
def test_every_cu_file_compiles_for_sm80_and_sm90(tmp_path):
    """One nvcc per file (both architectures in one call), the files in parallel."""
    procs = []
    for path in CU_FILES:
        obj = tmp_path / (os.path.basename(path) + ".o")
        cmd = [NVCC, "-c", *NVCC_FLAGS, *GENCODES, "-I", INCLUDE_DIR, path, "-o", str(obj)]
        procs.append((path, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    failures = []
    for path, cmd, proc in procs:
        output, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(f"{' '.join(cmd)}\n{output}")
        else:
            assert (tmp_path / (os.path.basename(path) + ".o")).stat().st_size > 0
    assert not failures, "nvcc failed:\n" + "\n\n".join(failures)


def _torch_include_dirs():
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    return include_paths()


@needs_nvcc
def test_aten_wrapper_passes_a_syntax_check(tmp_path):
    """``g++ -fsyntax-only`` of the wrapper against this torch's headers and the toolkit's.

    A CPU wheel of torch ships the c10/cuda headers but not the generated
    ``c10/cuda/impl/cuda_cmake_macros.h``; a stand-in is written for it here
    (its one macro only matters for linking).  The real build happens only
    where torch has CUDA (setup.py).
    """
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    torch_includes = _torch_include_dirs()
    cuda_include = _cuda_include_dir()
    assert cuda_include, "nvcc is present but its include folder (cuda_runtime_api.h) was not found"
    if not any(os.path.exists(os.path.join(d, "c10", "cuda", "CUDAStream.h")) for d in torch_includes):
        pytest.skip("this torch ships no c10/cuda headers")
    stub = tmp_path / "stub"
    if not any(os.path.exists(os.path.join(d, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for d in torch_includes):
        (stub / "c10" / "cuda" / "impl").mkdir(parents=True)
        (stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-DFUSEDRNN_WITH_CUDA",
           "-I", str(stub), "-I", INCLUDE_DIR]
    for d in torch_includes + [cuda_include]:
        cmd += ["-isystem", d]  # their own warnings are not ours
    failures = []
    for path in WRAPPER_FILES:
        proc = subprocess.run(cmd + [path], capture_output=True, text=True, timeout=600)
        # our own diagnostics only (warnings too): a line "<path>:<line>:<col>: warning|error"
        ours = [line for line in proc.stderr.splitlines()
                if line.startswith(path) and re.search(r": (warning|error):", line)]
        if proc.returncode != 0 or ours:
            failures.append(f"{os.path.basename(path)}:\n" + "\n".join(ours or proc.stderr.splitlines()[-40:]))
    assert not failures, "the ATen wrapper does not compile:\n" + "\n\n".join(failures)
