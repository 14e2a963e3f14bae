"""Timing and memory measurement, done the same way for every implementation.

* CPU: :class:`torch.utils.benchmark.Timer` ``adaptive_autorange``: its
  block-size estimate runs the statement first (the warm-up), then it repeats
  until the spread is small (IQR under 10% of the median) or the time budget
  is spent.
* CUDA: CUDA events through ``triton.testing.do_bench`` (warm-up, L2 flushed
  between runs) when Triton is installed, else an event loop of our own; small
  shapes are captured in a CUDA graph when the implementation allows it, so
  launch overhead does not decide the comparison.

Every figure is the median with the 20% and 80% quantiles of the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Set

import torch


@dataclass
class Timing:
    """Seconds per call: median, 20% and 80% quantiles, over ``samples`` repeats."""

    median: float
    q20: float
    q80: float
    samples: int
    cuda_graph: bool = False


def _quantiles(times: List[float]) -> tuple:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def time_cpu(fn: Callable[[], Any], threads: int, min_time: float = 0.3, max_time: float = 2.0) -> Timing:
    """Median of repeated runs of ``fn`` with ``threads`` threads (torch.utils.benchmark)."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.adaptive_autorange(threshold=0.1, min_run_time=min_time, max_run_time=max_time)
    median, q20, q80 = _quantiles(m.times)
    return Timing(median, q20, q80, len(m.times))


def time_cuda(fn: Callable[[], Any], warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Median of CUDA-event timings of ``fn`` (``triton.testing.do_bench`` if available)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        median, q20, q80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        estimate = max(median, 1e-3)
        return Timing(median / 1e3, q20 / 1e3, q80 / 1e3, max(1, int(rep_ms / estimate)))
    return _time_cuda_events(fn, warmup_ms, rep_ms)


def _time_cuda_events(fn, warmup_ms: float, rep_ms: float) -> Timing:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / estimate))):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    median, q20, q80 = _quantiles(times)
    return Timing(median, q20, q80, len(times))


def cuda_graph(fn: Callable[[], Any]) -> Optional[Callable[[], None]]:
    """``fn`` captured in a CUDA graph (its replay), or None if it cannot be captured.

    Capture fails for code that synchronises with the host or allocates
    outside the graph's pool; such implementations are timed eagerly.
    """
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream, as capture requires
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:  # capture is an optimisation: any failure means "time it eagerly"
        torch.cuda.synchronize()
        return None
    return graph.replay


def time_call(fn: Callable[[], Any], device: torch.device, threads: int, min_time: float, max_time: float,
              graph_below: float = 0.0) -> Timing:
    """Time ``fn`` on ``device``; on CUDA try a graph when the eager median is under ``graph_below`` seconds."""
    if device.type != "cuda":
        return time_cpu(fn, threads, min_time, max_time)
    eager = time_cuda(fn, rep_ms=max(25.0, min_time * 1e3))
    if eager.median >= graph_below:
        return eager
    replay = cuda_graph(fn)
    if replay is None:
        return eager
    graphed = time_cuda(replay, rep_ms=max(25.0, min_time * 1e3))
    graphed.cuda_graph = True
    return graphed if graphed.median < eager.median else eager


def storage_ptrs(tensors) -> Set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}


def saved_activation_bytes(forward: Callable[[], Any], exclude: Set[int]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of ``forward()``.

    Storages in ``exclude`` (the inputs and parameters, which exist anyway)
    are not counted: what is left is the memory training keeps per call.
    """
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = forward()
    del result
    return sum(seen.values())


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak CUDA memory allocated during ``fn()`` beyond what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    del result
    return torch.cuda.max_memory_allocated() - before


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, threads: int,
                  min_time: float, max_time: float) -> tuple:
    """(GFLOP/s, Timing) of one ``[m, k] @ [k, n]`` product: the reference line of the run."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    timing = time_call(lambda: torch.mm(a, b), device, threads, min_time, max_time)
    return 2.0 * m * k * n / timing.median / 1e9, timing


def peak_matmul_size(device: torch.device, quick: bool) -> int:
    """Side of the square product that measures the machine's peak (about 0.1 s on this CPU)."""
    if quick:
        return 256
    return 8192 if device.type == "cuda" else 2048
