# fusedrnn: set-up, build, tests and benchmarks.
#
#   make test       the whole test suite (installs and builds first)
#   make fuzz       the differential fuzzing campaign at length (hypothesis profile "fuzz")
#   make bench      correctness check of each available backend, then timings against torch.nn
#   make gpu-smoke  a GPU at hand for minutes: build, each kernel once, memcheck, headline benchmark (< 8 min)
#   make gpu-check  the GPU validation script (benchmarks/gpu_check.sh)
#   make emu-asan   the emulated CUDA tests under AddressSanitizer+UBSan (a sanitizer build of the CUDA emulation)
#   make emu-tsan   the emulated CUDA tests under ThreadSanitizer
#   make mutation-check  known bugs planted in the CUDA kernels one at a time: the emulated tests must catch each
#   make build      install the build dependencies and build the C++ extension fusedrnn._C
#   make clean      remove build outputs (make distclean also removes .venv)
#
# Which Python: $(PYTHON) if it can import torch -- that torch is used as it is,
# never upgraded or replaced, and the other dependencies go into its environment --
# else a local virtualenv $(VENV) with torch==$(TORCH_VERSION), pinned because an
# unpinned torch is a multi-GB CUDA build.  Stamp files under build/ remember what
# was installed and built, so a second `make test` goes straight to the tests.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.8.0
# What each target needs besides torch.  pip installs only what is missing, so
# where everything is installed already (a GPU machine without network) no step
# goes to the network.  setuptools>=70.1 builds editable wheels by itself.
BUILD_REQUIREMENTS := "setuptools>=70.1" ninja pybind11
BENCH_REQUIREMENTS := rich matplotlib numpy
# ONNX export tests (tests/test_onnx_export.py): the versions tested with torch 2.13; none requires torch, and
# the constraints file below keeps the installed torch whatever they say
ONNX_REQUIREMENTS := onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2
TEST_REQUIREMENTS := pytest pytest-benchmark hypothesis expecttest $(BENCH_REQUIREMENTS) $(ONNX_REQUIREMENTS)
# -ra: the reasons for skips (and a summary of failures) at the end
PYTEST_FLAGS ?= -q -ra
BENCH_ARGS ?=

# the interpreter of $(PYTHON) if it can import torch, else empty
TORCH_PYTHON := $(shell $(PYTHON) -c "import sys, torch; print(sys.executable)" 2>/dev/null)
ifneq ($(TORCH_PYTHON),)
PY := $(TORCH_PYTHON)
TORCH_STAMP :=
else
PY := $(abspath $(VENV))/bin/python
TORCH_STAMP := $(VENV)/.torch-installed
endif

# one stamp folder per interpreter, so switching environments installs and builds again
STAMPS := build/make-$(shell printf '%s' '$(PY)' | cksum | cut -d ' ' -f 1)
CONSTRAINTS := $(STAMPS)/constraints.txt
REPORTS := build/test-reports
CSRC := $(shell find csrc -type f 2>/dev/null)
# rebuild when the compiled extension is missing, whatever the stamps say
REBUILD := $(if $(wildcard fusedrnn/_C*.so fusedrnn/_C*.pyd),,FORCE)
# the environment's scripts (ninja, pytest) first on PATH, as if it were activated
RUN := PATH="$(dir $(PY)):$$PATH"

.PHONY: help deps build test fuzz bench gpu-check emu-asan emu-tsan clean distclean FORCE
# the pip steps write to one environment: never run them side by side under make -j
.NOTPARALLEL:

help:
	@sed -n 's/^#   make /  make /p' Makefile
	@echo "Python: $(PY)"

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install "torch==$(TORCH_VERSION)"
	touch $@

# The torch found is written into a constraints file that every pip call below
# honours, so no dependency can upgrade or replace it.
$(CONSTRAINTS): $(TORCH_STAMP)
	mkdir -p $(@D)
	$(PY) -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $@ \
		|| : > $@  # torch not installed by pip (a source build): nothing we install requires it

PIP_INSTALL = $(RUN) $(PY) -m pip install -c $(CONSTRAINTS)

$(STAMPS)/deps-build: $(CONSTRAINTS) Makefile
	$(PIP_INSTALL) $(BUILD_REQUIREMENTS)
	touch $@

$(STAMPS)/deps-bench: $(CONSTRAINTS) Makefile
	$(PIP_INSTALL) $(BENCH_REQUIREMENTS)
	touch $@

$(STAMPS)/deps-test: $(CONSTRAINTS) Makefile
	$(PIP_INSTALL) $(TEST_REQUIREMENTS)
	@# GPU wheels of torch bring the triton they were built with: keep that one
	$(RUN) $(PY) -c "import triton" 2>/dev/null || $(PIP_INSTALL) "triton==$(TRITON_VERSION)"
	touch $@

deps: $(STAMPS)/deps-build $(STAMPS)/deps-bench $(STAMPS)/deps-test

# --no-deps: the dependencies are installed above; pip must not resolve torch again.
# The build follows the sources, not the stamps of the pip steps (order-only);
# after changing torch itself, `make clean`.
# fusedrnn._C is a limited-API library (_C.abi3.so): an older build named for one interpreter
# (_C.cpython-*.so) would be imported before it, so it goes first.
$(STAMPS)/built: setup.py pyproject.toml $(CSRC) $(REBUILD) | $(STAMPS)/deps-build
	rm -f fusedrnn/_C.cpython-*.so
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 $(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(STAMPS)/built

# Tests: the Triton kernel tests run in a second process because TRITON_INTERPRET=1
# must be set before the kernels are imported.  That run finding no tests (pytest
# exits 5) is fine.  Both runs always execute; the last line sums them up.
test: build $(STAMPS)/deps-test
	@rm -rf $(REPORTS) && mkdir -p $(REPORTS)
	@status=0; \
	echo "== tests (not triton)"; \
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 $(PY) -m pytest tests -m "not triton" $(PYTEST_FLAGS) \
		--junitxml=$(REPORTS)/main.xml || status=1; \
	echo "== triton kernel tests (TRITON_INTERPRET=1)"; \
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 TRITON_INTERPRET=1 $(PY) -m pytest tests -m triton $(PYTEST_FLAGS) \
		--junitxml=$(REPORTS)/triton.xml; \
	rc=$$?; if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then status=1; fi; \
	$(PY) -c "$$JUNIT_SUMMARY" $(REPORTS)/*.xml || status=1; \
	exit $$status

# The fuzz tests of `make test` under the hypothesis profile "fuzz" (tests/fuzz_cases.py):
# fresh random examples, FUZZ_FACTOR (default 20) times as many, larger sizes; failing
# examples are kept in build/hypothesis and replayed first.  FUZZ_ARGS go to pytest,
# e.g. FUZZ_ARGS=--hypothesis-seed=1 to repeat a run.
FUZZ_ARGS ?=
fuzz: build $(STAMPS)/deps-test
	@status=0; \
	echo "== fuzz (not triton)"; \
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz_differential.py \
		$(PYTEST_FLAGS) $(FUZZ_ARGS) || status=1; \
	echo "== triton fuzz (TRITON_INTERPRET=1)"; \
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 HYPOTHESIS_PROFILE=fuzz TRITON_INTERPRET=1 $(PY) -m pytest \
		tests/triton/test_triton_fuzz.py -m triton $(PYTEST_FLAGS) $(FUZZ_ARGS) || status=1; \
	exit $$status

bench: build $(STAMPS)/deps-bench
	$(RUN) $(PY) -m fusedrnn.bench $(BENCH_ARGS)

gpu-check: build $(STAMPS)/deps-bench
	$(RUN) PYTHON=$(PY) bash benchmarks/gpu_check.sh

# The smoke run builds (through `make build`) only where there is a GPU, under its own timeout,
# so it has no prerequisites here; report: benchmarks/results/gpu-smoke-<time>/ or $OUT.
# GPU_SMOKE_ARGS go to the script, e.g. --skip-build or --out DIR.
GPU_SMOKE_ARGS ?=
.PHONY: gpu-smoke
gpu-smoke:
	$(RUN) $(PY) benchmarks/gpu_smoke.py $(GPU_SMOKE_ARGS)

# Sanitizer builds of the CUDA emulation (csrc/emulation; setup.py builds
# fusedrnn._cuda_emulation alone, instrumented, into build/emu-<sanitizer>), then
# the emulated CUDA tests at small shapes with that build loaded
# (FUSEDRNN_CUDA_EMULATION_LIBRARY) and the sanitizer's runtime preloaded into
# Python.  Any report fails the run (halt_on_error); what each proves:
# csrc/cuda/README.md, "Emulation".  One intra-op thread: the kernels run on the
# calling thread, and torch's uninstrumented thread pool would only add noise.
EMU_SAN_TESTS := tests/test_cuda_emulation.py tests/test_cuda_backend.py
EMU_SAN_SELECT := not long_sequence and not benchmark_shape
EMU_SAN_ENV = OMP_NUM_THREADS=1 FUSEDRNN_REQUIRE_EXTENSION=1 \
	FUSEDRNN_CUDA_EMULATION_LIBRARY=$$(ls $(abspath build/emu-$(1))/fusedrnn/_cuda_emulation*.so) \
	LD_PRELOAD="$$($(CXX) -print-file-name=lib$(2).so) $$($(CXX) -print-file-name=libstdc++.so)"
ASAN_SETTINGS := ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_SETTINGS := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

build/emu-%/.built: setup.py $(CSRC) | $(STAMPS)/deps-build
	rm -rf $(@D)
	$(RUN) FUSEDRNN_REQUIRE_EXTENSION=1 FUSEDRNN_EMULATION_ONLY=1 FUSEDRNN_EMULATION_SANITIZER=$* \
		$(PY) setup.py -q build_ext --build-lib $(@D) --build-temp $(@D)/tmp
	touch $@

emu-asan: build $(STAMPS)/deps-test build/emu-address/.built
	$(RUN) $(call EMU_SAN_ENV,address,asan) $(ASAN_SETTINGS) \
		$(PY) -m pytest $(EMU_SAN_TESTS) -m "not gpu" -k "$(EMU_SAN_SELECT)" $(PYTEST_FLAGS) -p no:cacheprovider

emu-tsan: build $(STAMPS)/deps-test build/emu-thread/.built
	$(RUN) $(call EMU_SAN_ENV,thread,tsan) $(TSAN_SETTINGS) \
		$(PY) -m pytest $(EMU_SAN_TESTS) -m "not gpu" -k "$(EMU_SAN_SELECT)" $(PYTEST_FLAGS) -p no:cacheprovider

# tests/mutation_check.py: builds the emulation (plain, and with the sanitizers) in a copy of the
# tree kept in build/mutation-check, so a second run recompiles only what changed; the table goes
# to build/mutation-check.md.  MUTATION_ARGS go to the script, e.g. --only NAME (--list names them).
MUTATION_ARGS ?=
.PHONY: mutation-check
mutation-check: build $(STAMPS)/deps-test
	$(RUN) $(PY) tests/mutation_check.py --work build/mutation-check $(MUTATION_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .benchmarks
	rm -f fusedrnn/_C*.so fusedrnn/_C*.pyd fusedrnn/_cuda_emulation*.so
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

FORCE:

# "tests: N passed, N failed, N skipped" over the JUnit reports of both pytest runs
define JUNIT_SUMMARY
import sys, xml.etree.ElementTree as ET
n = dict(tests=0, failures=0, errors=0, skipped=0)
for path in sys.argv[1:]:
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in n:
            n[key] += int(suite.get(key, 0))
failed = n["failures"] + n["errors"]
print(f"tests: {n['tests'] - failed - n['skipped']} passed, {failed} failed, {n['skipped']} skipped")
endef
export JUNIT_SUMMARY
