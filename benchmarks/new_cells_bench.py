"""The cells with kernels on the ``cpu`` backend beyond the built-in ones (IndRNN:
csrc/cpu/diagonal_recurrence.h; the layer-normalised LSTM and GRU: csrc/cpu/layer_norm_recurrence.h;
sLSTM: csrc/cpu/slstm_recurrence.h) against the reference backend (the same equations in plain PyTorch,
step by step) and against a plain cell of the same size on the ``cpu`` backend (IndRNN, LayerNorm LSTM
and sLSTM: the LSTM; LayerNorm GRU: the GRU), in one process, on one layer-direction (issue 16's
targets: docs/design.md section 10's conventions, a smaller script than ``fusedrnn.bench``).

    python benchmarks/new_cells_bench.py [--cells indrnn,layer_norm_lstm,layer_norm_gru,slstm] [--threads 2]
                                         [--shape T B I H] [--rounds 3] [--compiled] [--heads 1] [--zoneout RATE]

``--heads``: sLSTM's heads (its recurrent weight block-diagonal, ``H/heads`` wide; 1: a dense one, the
LSTM's product).  sLSTM starts from its states after one step (n = 1, m = 0, c and h small).

``--zoneout RATE`` times zoneout instead (haste's, fusedrnn/zoneout.py): LSTM and GRU in training with a
mask drawn per call as the modules draw it, on the ``cpu`` backend's kernels, on the reference backend, and
the same layer on the ``cpu`` backend without zoneout (what zoneout costs in the kernels).

``--compiled`` adds the same equations compiled by ``torch.compile`` (the reference's step function, one
compiled graph per step and its backward, called in a Python loop over the steps: what a user who writes
the cell in PyTorch and compiles it gets; compiling the whole unrolled sequence takes minutes here).

Inference: a no-grad forward.  Training: the forward plus the gradients of x and every weight.
Each figure is the median of torch.utils.benchmark's adaptive timing, in rounds that take every
implementation in turn (the machine's speed drifts); ratios are per round, then the median, with the
ratio of the best-of-rounds times in brackets (on a shared, noisy machine each implementation's fastest
round is its least disturbed one).
Before timing, each cpu result (every mode of the family) is checked against the float64 reference.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
import torch.utils.benchmark as tb

from fusedrnn import cells, functional, reference, zoneout
from fusedrnn.cells import CellSpec
from fusedrnn.layer import LayerWeights
from fusedrnn.testing import error

#: family -> the plain cell of the same size it is timed against on the cpu backend
BASELINES = {
    "indrnn": CellSpec("lstm", "lstm"),
    "layer_norm_lstm": CellSpec("lstm", "lstm"),
    "layer_norm_gru": CellSpec("gru", "reset_after"),
    "slstm": CellSpec("lstm", "lstm"),
}


def weights(cell: CellSpec, I: int, H: int, g: torch.Generator, heads: int = 1) -> LayerWeights:
    G = cell.gates
    if cell.record.recurrent == "diagonal":
        w_hh = torch.rand(G * H, generator=g) - 0.5
    else:  # sLSTM's heads hold blocks of D = H/heads columns (the others a matrix over all of h)
        D = H // heads if cell.record.recurrent == "block_diagonal" else H
        w_hh = torch.randn(G * H, D, generator=g) / D ** 0.5
    # gains near one, the shift near zero (their initial values), so that the normalisations matter
    w_extra = 1 + 0.1 * torch.randn(cell.extra_blocks * H, generator=g) if cell.extra_blocks else None
    return LayerWeights(torch.randn(G * H, I, generator=g) / I ** 0.5, w_hh, torch.randn(G * H, generator=g) * 0.1,
                        torch.randn(G * H, generator=g) * 0.1, w_extra=w_extra)


def initial_cell_state(cell: CellSpec, B: int, H: int, g: torch.Generator):
    """c0, small; sLSTM's (c, n, m) concatenated as after one step (n = 1, m = 0)."""
    if not cell.has_cell_state:
        return None
    c = torch.randn(B, H, generator=g) * 0.1
    if cell.cell_state_blocks == 1:
        return c
    return torch.cat([c, torch.ones(B, H), torch.zeros(B, H)], dim=1)


def make(cell: CellSpec, backend: str, T: int, B: int, I: int, H: int, train: bool, heads: int = 1):
    g = torch.Generator().manual_seed(0)
    w = weights(cell, I, H, g, heads)
    x = torch.randn(T, B, I, generator=g)
    h0 = torch.randn(B, H, generator=g) * 0.1
    c0 = initial_cell_state(cell, B, H, g)
    leaves = [t for t in (x, *w) if t is not None] if train else []
    for t in leaves:
        t.requires_grad_()

    layer = compiled_layer(cell) if backend == "compiled" else (
        lambda *args: functional.layer(cell, *args, backend=backend))

    def run():
        if not train:
            with torch.no_grad():
                return layer(x, h0, c0, w).out
        res = layer(x, h0, c0, w)
        return torch.autograd.grad(res.out.sum() + res.h_n.sum(), leaves)

    return run, (x, h0, c0, w)


def compiled_layer(cell: CellSpec):
    """The layer as plain PyTorch with its step compiled by ``torch.compile`` (fixed shapes): the input side of
    every step at once, then the compiled step in a Python loop; ``(out, h_n)`` as a layer's."""
    step = torch.compile(reference.step_function(cell), dynamic=False)

    def layer(x, h0, c0, w):
        T, B = x.shape[:2]
        xp = reference.input_projection(cell, x.reshape(T * B, -1), w)
        h, c, outs = h0, c0, []
        for t in range(T):
            h, c, _ = step(xp[t * B:(t + 1) * B], h, c, w)
            outs.append(h)
        return functional.LayerOutput(torch.stack(outs), h, c)

    return layer


def check(cell: CellSpec, T: int, B: int, I: int, H: int, heads: int = 1) -> float:
    """The cpu backend's output and gradients against the float64 reference: the largest relative error."""
    run, (x, h0, c0, w) = make(cell, "cpu", T, B, I, H, True, heads)
    got = run()
    d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    xd, wd = d(x), LayerWeights(*(d(t) for t in w))
    res = functional.layer(cell, xd, h0.double(), None if c0 is None else c0.double(), wd, backend="reference")
    want = torch.autograd.grad(res.out.sum() + res.h_n.sum(), [t for t in (xd, *wd) if t is not None])
    return max(error(a, b)[1] for a, b in zip(got, want))


def heads(family: str, args) -> int:
    """The heads of a family's recurrent weight: --heads for sLSTM, one for the others."""
    return args.heads if family == "slstm" else 1


def time_rounds(runs: dict, args) -> dict:
    """name -> the median time of ``runs[name]()`` in each of ``args.rounds`` rounds (seconds), the
    implementations taking turns within a round, each warmed up first."""
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            fn()  # warm-up
            times[name].append(tb.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
                               .adaptive_autorange(min_run_time=1.0).median)
    return times


def ratio_text(times: dict, a: str, b: str) -> str:
    """``a``'s time / ``b``'s: the median of the per-round ratios, then the best rounds' ratio in brackets."""
    per_round = [x / y for x, y in zip(times[a], times[b])]
    return f"{statistics.median(per_round):.2f}x ({min(times[a]) / min(times[b]):.2f}x)"


def time_family(family: str, args) -> None:
    T, B, I, H = args.shape
    for mode in cells.modes(family):
        # the training check sums the float32 errors of T steps: the long-sequence rule of section 8
        rel = check(CellSpec(family, mode), T, B, I, H, heads(family, args))
        print(f"check {CellSpec(family, mode)} cpu vs float64 reference: max relative error {rel:.1e}")
        assert rel <= 1e-4, rel
    cell, baseline = CellSpec(family, cells.default_mode(family)), BASELINES[family]
    if args.compiled:  # the compiled equations compute what the reference does
        got, want = (make(cell, backend, T, B, I, H, False, heads(family, args))[0]()
                     for backend in ("compiled", "reference"))
        rel = error(got, want)[1]
        print(f"check {cell} compiled vs reference (float32): max relative error {rel:.1e}")
        assert rel <= 1e-4, rel
    impls = {"cpu": (cell, "cpu"), "reference": (cell, "reference"), "baseline": (baseline, "cpu")}
    if args.compiled:
        impls["compiled"] = (cell, "compiled")
    compiled_head = (f" {cell} compiled (ms) | compiled / cpu |", " --- | --- |") if args.compiled else ("", "")
    with_heads = f" heads={args.heads}" if family == "slstm" else ""
    print(f"\n{cell} (baseline: {baseline} cpu), T={T} B={B} I={I} H={H}{with_heads} float32, {args.threads} threads, "
          f"torch {torch.__version__}, {args.rounds} rounds\n")
    print(f"| mode | {cell} cpu (ms) | {cell} reference (ms) | {baseline} cpu (ms) | reference / cpu | "
          f"cpu / {baseline} cpu |{compiled_head[0]}")
    print(f"| --- | --- | --- | --- | --- | --- |{compiled_head[1]}")
    for train in (False, True):
        runs = {name: make(c, backend, T, B, I, H, train, heads(c.family, args))[0]
                for name, (c, backend) in impls.items()}
        times = time_rounds(runs, args)
        ratio = functools.partial(ratio_text, times)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        compiled = f" {med['compiled']:.2f} | {ratio('compiled', 'cpu')} |" if args.compiled else ""
        print(f"| {'training' if train else 'inference'} | {med['cpu']:.2f} | {med['reference']:.2f} | "
              f"{med['baseline']:.2f} | {ratio('reference', 'cpu')} | {ratio('cpu', 'baseline')} |{compiled}")


ZONEOUT_CELLS = (CellSpec("lstm", "lstm"), CellSpec("gru", "reset_after"))


def make_zoneout(cell: CellSpec, backend: str, rate: float, T: int, B: int, I: int, H: int):
    """A training call (forward, then the gradients of x and every weight) with zoneout ``rate`` (0: none), its
    mask drawn in each call as the modules draw it."""
    g = torch.Generator().manual_seed(0)
    w = weights(cell, I, H, g)
    x = torch.randn(T, B, I, generator=g)
    h0 = torch.randn(B, H, generator=g) * 0.1
    c0 = torch.randn(B, H, generator=g) * 0.1 if cell.has_cell_state else None
    leaves = [t.requires_grad_() for t in (x, *w) if t is not None]

    def run():
        mask = zoneout.draw_mask(rate, (T, B, H), x) if rate else None
        res = functional.layer(cell, x, h0, c0, w, backend=backend, zoneout=rate, zoneout_mask=mask)
        return torch.autograd.grad(res.out.sum() + res.h_n.sum(), leaves)

    return run, (x, h0, c0, w)


def check_zoneout(cell: CellSpec, rate: float, T: int, B: int, I: int, H: int) -> float:
    """The cpu kernels' gradients with zoneout against the float64 reference, one fixed mask: the largest
    relative error."""
    _, (x, h0, c0, w) = make_zoneout(cell, "cpu", rate, T, B, I, H)
    mask = zoneout.draw_mask(rate, (T, B, H), x)
    grads = []
    for backend, dtype in (("cpu", torch.float32), ("reference", torch.float64)):
        d = lambda t: None if t is None else t.detach().to(dtype).requires_grad_()  # noqa: E731
        xd, wd = d(x), LayerWeights(*(d(t) for t in w))
        res = functional.layer(cell, xd, h0.to(dtype), None if c0 is None else c0.to(dtype), wd, backend=backend,
                               zoneout=rate, zoneout_mask=mask.to(dtype))
        grads.append(torch.autograd.grad(res.out.sum() + res.h_n.sum(), [t for t in (xd, *wd) if t is not None]))
    return max(error(a, b)[1] for a, b in zip(*grads))


def time_zoneout(args) -> None:
    T, B, I, H = args.shape
    rate = args.zoneout
    for cell in ZONEOUT_CELLS:
        rel = check_zoneout(cell, rate, T, B, I, H)
        print(f"check {cell} zoneout={rate} cpu vs float64 reference: max relative error {rel:.1e}")
        assert rel <= 1e-4, rel
    print(f"\nzoneout={rate}, training (forward + gradients of x and the weights), T={T} B={B} I={I} H={H} "
          f"float32, {args.threads} threads, torch {torch.__version__}, {args.rounds} rounds\n")
    print("| cell | cpu zoneout (ms) | reference zoneout (ms) | cpu no zoneout (ms) | reference / cpu | "
          "cpu zoneout / cpu no zoneout |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell in ZONEOUT_CELLS:
        runs = {name: make_zoneout(cell, backend, r, T, B, I, H)[0]
                for name, (backend, r) in {"cpu": ("cpu", rate), "reference": ("reference", rate),
                                           "plain": ("cpu", 0.0)}.items()}
        times = time_rounds(runs, args)
        ratio = functools.partial(ratio_text, times)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"| {cell} | {med['cpu']:.2f} | {med['reference']:.2f} | {med['plain']:.2f} | "
              f"{ratio('reference', 'cpu')} | {ratio('cpu', 'plain')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(BASELINES), help="families, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=4, default=(100, 32, 256, 256), metavar=("T", "B", "I", "H"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="also time the step compiled by torch.compile")
    parser.add_argument("--zoneout", type=float, default=0.0, metavar="RATE",
                        help="time LSTM and GRU with this zoneout rate instead of the cells (training)")
    parser.add_argument("--heads", type=int, default=1, help="sLSTM's heads (they must divide H)")
    args = parser.parse_args(argv)
    if args.shape[3] % args.heads:
        parser.error(f"--heads {args.heads} does not divide H = {args.shape[3]}")
    torch.set_num_threads(args.threads)
    if args.zoneout:
        time_zoneout(args)
        return 0
    for family in args.cells.split(","):
        if family not in BASELINES:
            parser.error(f"--cells: {family!r} is not one of {', '.join(BASELINES)}")
        time_family(family, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
