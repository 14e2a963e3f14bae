"""Build of fusedrnn and its C++ extension ``fusedrnn._C``.

The extension holds the CPU kernels (``csrc/cpu``) always, and the CUDA
kernels (``csrc/cuda``) only where the installed torch has CUDA and a CUDA
toolkit is found.  It needs torch at build time, so install into an
environment that already has torch, without build isolation (an isolated
build would have no torch, or would download an unpinned one)::

    pip install --no-build-isolation -e .          # the Makefile's targets do this
    TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation -e .   # on an H100/H200

``fusedrnn._C`` is built with ``py_limited_api`` and links no Python library
(not torch's libtorch_python either): the ops it registers then also run in a
process without Python (csrc/fusedrnn.cpp says how it is still importable).

If the extension cannot be built (no compiler, say) the package still
installs and ``fusedrnn`` runs on its reference backend, saying why once at
run time.  Environment switches:

``FUSEDRNN_REQUIRE_EXTENSION=1``  a failed extension build fails the install (``make`` sets it)
``FUSEDRNN_NO_EXTENSION=1``       skip the extension on purpose (pure-Python install)
``FUSEDRNN_NO_CUDA=1``            build only the CPU kernels even where torch has CUDA
``FUSEDRNN_NATIVE=1``             compile the CPU kernels with ``-march=native``
``FUSEDRNN_NO_EMULATION=1``       skip the CUDA emulation module (below)

Where torch has no CUDA, the CUDA kernels are built a second way, into
``fusedrnn._cuda_emulation``: compiled by the host C++ compiler against the
emulation header ``csrc/emulation/cuda_emulation.h`` (included in place of the
CUDA headers), they run on CPU tensors when ``FUSEDRNN_CUDA_EMULATE=1``
(csrc/cuda/README.md, "Emulation").  ``make emu-asan`` / ``make emu-tsan`` build
it with a sanitizer into ``build/emu-<sanitizer>`` (``FUSEDRNN_EMULATION_SANITIZER``
= address or thread, with ``FUSEDRNN_EMULATION_ONLY=1``: nothing else built).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _optional(build_extension_class):
    """``build_ext`` that, unless the extension is required, lets the install go on without it."""

    class OptionalBuildExtension(build_extension_class):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler missing or failing: CompileError, OSError, RuntimeError (ninja)
                if _flag("FUSEDRNN_REQUIRE_EXTENSION"):
                    raise
                print(
                    f"WARNING: the C++ extension fusedrnn._C was not built ({type(exc).__name__}: {exc}); "
                    "fusedrnn will run on its reference backend. Set FUSEDRNN_REQUIRE_EXTENSION=1 to make "
                    "this an error.",
                    file=sys.stderr,
                )

    return OptionalBuildExtension


def _extensions():
    if _flag("FUSEDRNN_NO_EXTENSION"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # no torch at build time: pure-Python install, reference backend only
        if _flag("FUSEDRNN_REQUIRE_EXTENSION"):
            raise
        return [], {}

    cxx_flags = ["-O3", "-std=c++17"]
    if _flag("FUSEDRNN_NATIVE"):
        cxx_flags.append("-march=native")
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and not _flag("FUSEDRNN_NO_CUDA")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        ext = CUDAExtension(
            "fusedrnn._C",
            sources,
            include_dirs=include_dirs,
            py_limited_api=True,
            define_macros=[("FUSEDRNN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
        )
    else:
        ext = CppExtension("fusedrnn._C", sources, include_dirs=include_dirs, extra_compile_args=cxx_flags,
                           py_limited_api=True)
    exts = [ext]
    if _flag("FUSEDRNN_EMULATION_ONLY"):
        exts = []
    # The emulation registers the CUDA ops for CPU tensors: never next to the real ones.
    # Linux only (its fiber switch and stacks: mmap, ELF assembly or ucontext).
    if not with_cuda and sys.platform.startswith("linux") and not _flag("FUSEDRNN_NO_EMULATION"):
        exts.append(_emulation_extension(CppExtension, include_dirs))
    # ninja compiles the sources in parallel (MAX_JOBS caps it); torch falls back to a serial build without it
    return exts, {"build_ext": _optional(BuildExtension).with_options(use_ninja=True)}


def _emulation_extension(cpp_extension, include_dirs):
    """``fusedrnn._cuda_emulation``: csrc/cuda's kernels and wrapper on the CPU (see the module docstring)."""
    # The .cu files are compiled as C++ through one-line wrappers (a .cu source
    # would go to nvcc), generated so that a new kernel file needs no edit here.
    generated = os.path.join(ROOT, "build", "emulation_sources")
    os.makedirs(generated, exist_ok=True)
    wrappers = []
    for cu in _sources("csrc/cuda/*.cu") + _sources("csrc/emulation/*.cu"):
        path = os.path.join(generated, os.path.basename(cu).replace(".cu", "_cu.cpp"))
        text = f'// generated by setup.py: {cu} compiled as C++ for the CUDA emulation\n#include "../../{cu}"\n'
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        wrappers.append(os.path.relpath(path, ROOT))
    sanitizer = os.environ.get("FUSEDRNN_EMULATION_SANITIZER", "")
    # `#pragma unroll` is nvcc's
    flags, link = ["-O2", "-std=c++17", "-Wno-unknown-pragmas"], []
    if sanitizer:
        if sanitizer not in ("address", "thread"):
            raise ValueError(f"FUSEDRNN_EMULATION_SANITIZER must be 'address' or 'thread', got {sanitizer!r}")
        checks = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"] if sanitizer == "address" \
            else ["-fsanitize=thread"]
        flags = ["-O1", "-g", "-std=c++17", "-Wno-unknown-pragmas", "-fno-omit-frame-pointer"] + checks
        link = checks
    return cpp_extension(
        "fusedrnn._cuda_emulation",
        _sources("csrc/emulation/*.cpp") + _sources("csrc/cuda/*.cpp") + wrappers,
        # the stand-ins for the CUDA headers come first
        include_dirs=[os.path.join(ROOT, "csrc", "emulation", "include")] + include_dirs,
        define_macros=[("FUSEDRNN_CUDA_EMULATION", "1")],
        extra_compile_args=flags,
        extra_link_args=link,
    )


def _long_description():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


ext_modules, cmdclass = _extensions()

TEST_REQUIRES = ["pytest", "pytest-benchmark", "hypothesis", "expecttest", "numpy"]
BENCH_REQUIRES = ["rich", "matplotlib", "numpy"]

setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused LSTM, GRU and RNN layers for PyTorch: Triton, CUDA and C++ CPU kernels behind torch.nn's API",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={
        "triton": ["triton>=3.0"],
        "bench": BENCH_REQUIRES,
        "test": sorted(set(TEST_REQUIRES + BENCH_REQUIRES)),
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["fusedrnn-bench=fusedrnn.bench:main"]},
    license="Apache-2.0",
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
