"""IndRNN on the ``cpu`` backend (csrc/cpu/diagonal_recurrence.h) against the reference backend (the
same equations in plain PyTorch, step by step) and against a plain LSTM of the same size on the ``cpu``
backend, in one process, on one layer-direction (issue 16's targets: docs/design.md section 10's
conventions, a smaller script than ``fusedrnn.bench``).

    python benchmarks/indrnn_bench.py [--threads 2] [--shape T B I H]

Inference: a no-grad forward.  Training: the forward plus the gradients of x and every weight.
Each figure is the median of torch.utils.benchmark's adaptive timing, in 3 rounds that take every
implementation in turn (the machine's speed drifts); ratios are per round, then the median.
Before timing, each cpu result is checked against the float64 reference.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as tb

from fusedrnn import functional
from fusedrnn.cells import CellSpec
from fusedrnn.layer import LayerWeights
from fusedrnn.testing import error


def weights(cell: CellSpec, I: int, H: int, g: torch.Generator) -> LayerWeights:
    G = cell.gates
    w_hh = (torch.rand(G * H, generator=g) - 0.5 if cell.record.recurrent == "diagonal"
            else torch.randn(G * H, H, generator=g) / H ** 0.5)
    return LayerWeights(torch.randn(G * H, I, generator=g) / I ** 0.5, w_hh, torch.randn(G * H, generator=g) * 0.1,
                        torch.randn(G * H, generator=g) * 0.1)


def make(cell: CellSpec, backend: str, T: int, B: int, I: int, H: int, train: bool):
    g = torch.Generator().manual_seed(0)
    w = weights(cell, I, H, g)
    x = torch.randn(T, B, I, generator=g)
    h0 = torch.randn(B, H, generator=g) * 0.1
    c0 = torch.randn(B, H, generator=g) * 0.1 if cell.has_cell_state else None
    leaves = [t for t in (x, *w) if t is not None] if train else []
    for t in leaves:
        t.requires_grad_()

    def run():
        if not train:
            with torch.no_grad():
                return functional.layer(cell, x, h0, c0, w, backend=backend).out
        res = functional.layer(cell, x, h0, c0, w, backend=backend)
        return torch.autograd.grad(res.out.sum() + res.h_n.sum(), leaves)

    return run, (x, h0, c0, w)


def check(cell: CellSpec, T: int, B: int, I: int, H: int) -> float:
    """The cpu backend's output and gradients against the float64 reference: the largest relative error."""
    run, (x, h0, c0, w) = make(cell, "cpu", T, B, I, H, True)
    got = run()
    d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    xd, wd = d(x), LayerWeights(*(d(t) for t in w))
    res = functional.layer(cell, xd, h0.double(), None if c0 is None else c0.double(), wd, backend="reference")
    want = torch.autograd.grad(res.out.sum() + res.h_n.sum(), [t for t in (xd, *wd) if t is not None])
    return max(error(a, b)[1] for a, b in zip(got, want))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=4, default=(100, 32, 256, 256), metavar=("T", "B", "I", "H"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    T, B, I, H = args.shape
    indrnn, lstm = CellSpec("indrnn", "relu"), CellSpec("lstm", "lstm")
    for cell in (indrnn, CellSpec("indrnn", "tanh")):
        # the training check sums the float32 errors of T steps: the long-sequence rule of section 8
        rel = check(cell, T, B, I, H)
        print(f"check {cell} cpu vs float64 reference: max relative error {rel:.1e}")
        assert rel <= 1e-4, rel
    impls = {"IndRNN cpu": (indrnn, "cpu"), "IndRNN reference": (indrnn, "reference"), "LSTM cpu": (lstm, "cpu")}
    print(f"\nT={T} B={B} I={I} H={H} float32, {args.threads} threads, torch {torch.__version__}\n")
    print("| mode | IndRNN cpu (ms) | IndRNN reference (ms) | LSTM cpu (ms) | reference / IndRNN cpu | "
          "IndRNN cpu / LSTM cpu |")
    print("| --- | --- | --- | --- | --- | --- |")
    for train in (False, True):
        runs = {name: make(cell, backend, T, B, I, H, train)[0] for name, (cell, backend) in impls.items()}
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                fn()  # warm-up
                times[name].append(tb.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
                                   .adaptive_autorange(min_run_time=1.0).median)
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"| {'training' if train else 'inference'} | {med['IndRNN cpu']:.2f} | {med['IndRNN reference']:.2f} | "
              f"{med['LSTM cpu']:.2f} | {ratio('IndRNN reference', 'IndRNN cpu'):.1f}x | "
              f"{ratio('IndRNN cpu', 'LSTM cpu'):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
