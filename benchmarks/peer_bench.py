"""fusedrnn against FlashRNN (github.com/NX-AI/flashrnn) on the CPU, where FlashRNN is installed.

On a CPU FlashRNN runs its ``vanilla`` backend, a per-step PyTorch loop (its fused kernels are CUDA and
Triton): the peer a CPU user of FlashRNN has.  One layer-direction, float32, inference (no-grad forward);
FlashRNN takes the input side ``Wx`` ready-made, so its timed call includes that product (``x W^T``) too.
Cells: the LSTM, the Elman RNN and sLSTM (FlashRNN's ``lstm``, ``elman`` and ``slstm``; fusedrnn's ``cpu``
backend, sLSTM's with one head, FlashRNN's default).  FlashRNN's GRU takes four input gates and is not the same function as
torch.nn's: it is left out.  Each pair is first checked to compute the same outputs.

    pip install flashrnn        # (pure Python; its CUDA parts are compiled only when used)
    python benchmarks/peer_bench.py [--threads 2] [--shape T B I H] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics

import torch
import torch.utils.benchmark as tb

import fusedrnn

#: fusedrnn's module class and FlashRNN's function name, gates, per cell
CELLS = {"lstm": (fusedrnn.LSTM, "lstm", 4), "rnn": (fusedrnn.RNN, "elman", 1), "slstm": (fusedrnn.SLSTM, "slstm", 4)}


def flashrnn_call(module, fn: str, gates: int, x: torch.Tensor):
    """FlashRNN's vanilla forward of ``module``'s first layer-direction on ``x`` [T, B, I]: its outputs [T, B, H]."""
    from flashrnn import flashrnn

    T, B, _ = x.shape
    H = module.hidden_size
    if fn == "slstm":
        tensors = module.flashrnn_state_dict()
        W, R, b = tensors["W"], tensors["R"], tensors["b"]
    else:  # R = weight_hh as [G, 1 head, H out, H in] (FlashRNN's "GHDP"), b the sum of the two biases
        W, R = module.weight_ih_l0, module.weight_hh_l0.reshape(gates, 1, H, H)
        b = (module.bias_ih_l0 + module.bias_hh_l0).reshape(gates, 1, H)
    heads = R.shape[1]

    def call():
        Wx = (x @ W.t()).transpose(0, 1).reshape(B, T, gates, heads, H // heads)
        states = flashrnn(Wx, R, b, function=fn, backend="vanilla", dtype="float32")[0]
        h = states[0]  # [B, T (+1 with the initial state), heads, D]
        return h[:, -T:].reshape(B, T, H).transpose(0, 1)

    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=4, default=(100, 32, 256, 256), metavar=("T", "B", "I", "H"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("flashrnn") is None:
        print("FlashRNN is not installed here: nothing to compare (pip install flashrnn)")
        return 0
    torch.set_num_threads(args.threads)
    T, B, I, H = args.shape
    print(f"fusedrnn vs FlashRNN vanilla, T={T} B={B} I={I} H={H} float32 inference, {args.threads} threads, "
          f"torch {torch.__version__}, {args.rounds} rounds\n")
    print("| cell | fusedrnn backend | fusedrnn (ms) | FlashRNN vanilla (ms) | FlashRNN / fusedrnn | max abs difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (cls, fn, gates) in CELLS.items():
        torch.manual_seed(0)
        module = cls(I, H)
        x = torch.randn(T, B, I)
        backend = "cpu"  # what "auto" runs for CPU tensors, every cell here
        ours = lambda: module(x)[0]  # noqa: E731
        theirs = flashrnn_call(module, fn, gates, x)
        with torch.no_grad():
            diff = float((ours() - theirs()).abs().max())
            times = {"ours": [], "theirs": []}
            for _ in range(args.rounds):
                for key, call in (("ours", ours), ("theirs", theirs)):
                    timer = tb.Timer("call()", globals={"call": call}, num_threads=args.threads)
                    times[key].append(timer.blocked_autorange(min_run_time=0.5).median)
        ratio = statistics.median(t / o for t, o in zip(times["theirs"], times["ours"]))
        print(f"| {name} | {backend} | {statistics.median(times['ours']) * 1e3:.2f} | "
              f"{statistics.median(times['theirs']) * 1e3:.2f} | {ratio:.2f}x | {diff:.1e} |")
        assert diff <= 1e-3, (name, diff)  # the same function: float32 roundoff over T steps
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
