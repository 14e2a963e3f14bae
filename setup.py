"""Build of fusedrnn and its C++ extension ``fusedrnn._C``.

The extension holds the CPU kernels (``csrc/cpu``) always, and the CUDA
kernels (``csrc/cuda``) only where the installed torch has CUDA and a CUDA
toolkit is found.  If no compiler is available the package still installs:
``fusedrnn`` then runs on its reference backend and says so once
(``FUSEDRNN_NO_EXTENSION=1`` skips the build on purpose).

Install in an environment that already has torch:
``pip install --no-build-isolation -e .`` (the README's ``make`` targets do this).
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    if os.environ.get("FUSEDRNN_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # no torch at build time: pure-Python install, reference backend only
        return [], {}

    cxx_flags = ["-O3", "-std=c++17"]
    if os.environ.get("FUSEDRNN_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("FUSEDRNN_NO_CUDA") != "1"
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        ext = CUDAExtension(
            "fusedrnn._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("FUSEDRNN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
        )
    else:
        ext = CppExtension("fusedrnn._C", sources, include_dirs=include_dirs, extra_compile_args=cxx_flags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused LSTM, GRU and RNN layers for PyTorch: Triton, CUDA and C++ CPU kernels behind torch.nn's API",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={
        "triton": ["triton>=3.0"],
        "bench": ["rich", "matplotlib"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "expecttest", "rich", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["fusedrnn-bench=fusedrnn.bench:main"]},
    license="Apache-2.0",
)
