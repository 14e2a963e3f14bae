"""Timing of the fused CPU kernels against torch.nn at the CPU benchmark shapes (docs/design.md section 10).

One layer, one direction, float32, the same weights, one process, the
machine's thread count.  Prints torch.nn time / fusedrnn time (the ratio the
CPU targets in benchmarks/RESULTS.md are stated in) for inference (no_grad forward) and training
(forward + backward), plus the GFLOP/s of the forward against one large
torch.matmul of the same FLOPs.

The two sides are timed alternately, call by call, and the ratio is the
median of the per-pair ratios: on a shared (virtual) machine the speed of
the cores drifts within seconds (benchmarks/RESULTS.md, "measurements behind
choices in the code"), and back-to-back blocks of one side then the other
would mostly measure that drift.

    python benchmarks/cpu_profile.py [--cells lstm,gru,rnn] [--strategy auto|gemm|fused] [--shapes 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils import benchmark

from fusedrnn import backends, functional
from fusedrnn.backends.base import LayerWeights
from fusedrnn.cells import CellSpec

#: (T, B, I, H): the CPU benchmark shapes (docs/design.md section 10)
SHAPES = [(100, 32, 256, 256), (200, 8, 128, 512), (50, 64, 1024, 1024)]
MODULES = {"lstm": (nn.LSTM, CellSpec("lstm", "lstm")), "gru": (nn.GRU, CellSpec("gru", "reset_after")),
           "rnn": (nn.RNN, CellSpec("rnn", "tanh"))}


def median_ms(fn, min_run_time=1.0) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _once_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def paired_ms(baseline, candidate, min_run_time=2.0, min_pairs=5):
    """(median baseline ms, median candidate ms, median of per-pair baseline/candidate)."""
    baseline(), candidate()  # warm-up: first-call allocations, oneDNN primitive creation
    base, cand, ratios = [], [], []
    start = time.perf_counter()
    while len(ratios) < min_pairs or time.perf_counter() - start < min_run_time:
        b, c = _once_ms(baseline), _once_ms(candidate)
        base.append(b)
        cand.append(c)
        ratios.append(b / c)
    return statistics.median(base), statistics.median(cand), statistics.median(ratios)


def forward_flops(cell: CellSpec, T, B, I, H) -> float:
    return 2.0 * T * B * (I + H) * cell.gates * H


def matmul_gflops(flops: float) -> float:
    """GFLOP/s of one square-ish torch.matmul doing about ``flops``."""
    n = int(round((flops / 2) ** (1 / 3)))
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n ** 3 / median_ms(lambda: a @ b, 0.5) / 1e6


def run(cell_name: str, shape, strategy: str) -> dict:
    T, B, I, H = shape
    module_cls, cell = MODULES[cell_name]
    torch_mod = module_cls(I, H)
    weights = LayerWeights(torch_mod.weight_ih_l0, torch_mod.weight_hh_l0, torch_mod.bias_ih_l0,
                           torch_mod.bias_hh_l0)
    x = torch.randn(T, B, I)
    backends.get("cpu").strategy = strategy

    def ours():
        return functional.layer(cell, x, None, None, weights, backend="cpu")

    def theirs():
        return torch_mod(x)

    res = {}
    with torch.no_grad():
        res["fwd_torch"], res["fwd_ours"], res["fwd_ratio"] = paired_ms(theirs, ours)
    res["train_torch"], res["train_ours"], res["train_ratio"] = paired_ms(
        lambda: theirs()[0].sum().backward(), lambda: ours().out.sum().backward())
    flops = forward_flops(cell, T, B, I, H)
    res["fwd_gflops"] = flops / res["fwd_ours"] / 1e6
    res["matmul_gflops"] = matmul_gflops(flops)
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", default="lstm,gru,rnn")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--shapes", default="0,1,2")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {backends.get('cpu') and torch.ops.fusedrnn_C.describe()}")
    print(f"{'cell':5} {'T,B,I,H':18} {'fwd torch':>10} {'ours':>8} {'ratio':>6} | {'train torch':>11} {'ours':>8} "
          f"{'ratio':>6} | {'GF/s':>6} {'mm GF/s':>7} {'3x-fwd bound':>12}")
    for cell_name in args.cells.split(","):
        for i in args.shapes.split(","):
            shape = SHAPES[int(i)]
            r = run(cell_name, shape, args.strategy)
            bound = 3 * forward_flops(MODULES[cell_name][1], *shape) / r["matmul_gflops"] / 1e6
            print(f"{cell_name:5} {str(shape):18} {r['fwd_torch']:10.2f} {r['fwd_ours']:8.2f} "
                  f"{r['fwd_ratio']:6.2f} | {r['train_torch']:11.2f} {r['train_ours']:8.2f} "
                  f"{r['train_ratio']:6.2f} | {r['fwd_gflops']:6.1f} {r['matmul_gflops']:7.1f} "
                  f"{bound:9.2f} ms", flush=True)


if __name__ == "__main__":
    main()
