"""pytest-benchmark suite: the shapes of ``python -m fusedrnn.bench``, run to run comparable.

Not part of the test suite (``make test`` runs tests/ only).  Run::

    pytest benchmarks/ --benchmark-only --benchmark-autosave        # save a run
    pytest benchmarks/ --benchmark-only --benchmark-compare          # compare with the last saved run
    FUSEDRNN_BENCH_SHAPES=quick pytest benchmarks/ --benchmark-only  # a smoke run in seconds

Settings from the environment: ``FUSEDRNN_BENCH_SHAPES`` (presets or T,B,I,H,
space-separated; default: the device's preset, as ``fusedrnn.bench``),
``FUSEDRNN_BENCH_CELLS`` (comma-separated; default lstm,gru,rnn),
``FUSEDRNN_BENCH_DTYPE`` (default float32 on CPU, bfloat16 on CUDA),
``FUSEDRNN_BENCH_THREADS`` (default torch's), ``FUSEDRNN_BENCH_ROUNDS``
(default 5).  The implementations are torch.nn and the backends the benchmark
command would time (the reference backend only with the quick preset); each
benchmark group is one (cell, shape, mode), so torch.nn and the backends sit
side by side, and ``extra_info`` holds the FLOPs for GFLOP/s.
"""

import functools
import os

import pytest
import torch

from fusedrnn import testing
from fusedrnn.bench import cli
from fusedrnn.bench import shapes as bench_shapes

DEVICE = testing.default_device()
SHAPE_SPECS = os.environ.get("FUSEDRNN_BENCH_SHAPES", bench_shapes.DEFAULT_PRESET[DEVICE.type]).split()
SHAPES = bench_shapes.parse_shapes(SHAPE_SPECS)
CELLS = [c.strip() for c in os.environ.get("FUSEDRNN_BENCH_CELLS", "lstm,gru,rnn").split(",") if c.strip()]
DTYPE = testing.as_dtype(os.environ.get("FUSEDRNN_BENCH_DTYPE", "bfloat16" if DEVICE.type == "cuda" else "float32"))
ROUNDS = int(os.environ.get("FUSEDRNN_BENCH_ROUNDS", "5"))
THREADS = int(os.environ.get("FUSEDRNN_BENCH_THREADS", str(torch.get_num_threads())))
IMPLS = [cli.TORCH] + cli.choose_backends(None, DEVICE, quick=SHAPE_SPECS == ["quick"])


@functools.lru_cache(maxsize=1)  # one problem alive at a time: the large shapes take GiBs on GPU
def layer_bench(cell, shape):
    return cli.LayerBench(cell, shape, DTYPE, DEVICE)


def _synchronised(fn):
    if DEVICE.type != "cuda":
        return fn

    def call():
        result = fn()
        torch.cuda.synchronize()
        return result

    return call


PARAMS = [(c, s, m, i) for c in CELLS for s in SHAPES for m in cli.MODES for i in IMPLS]


@pytest.mark.parametrize("cell,shape,mode,impl", PARAMS,
                         ids=[f"{c}-T{s.T}-B{s.B}-I{s.I}-H{s.H}-{m}-{i}" for c, s, m, i in PARAMS])
def test_layer(benchmark, cell, shape, mode, impl):
    torch.set_num_threads(THREADS)
    lb = layer_bench(cell, shape)
    why = lb.unsupported(impl)
    if why is not None:
        pytest.skip(f"{impl} cannot run {cell} {dtype_label()} on {DEVICE}: {why}")
    fn = _synchronised(lb.call(impl, mode))
    flops = bench_shapes.forward_flops(lb.cell, shape) * (3 if mode == "training" else 1)
    benchmark.group = f"{cell} {shape.label} {dtype_label()} {mode}"
    benchmark.extra_info.update(flops=flops, device=str(DEVICE), dtype=dtype_label(), threads=THREADS)
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)


def dtype_label():
    return testing.dtype_name(DTYPE)
