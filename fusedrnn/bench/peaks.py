"""The machine's ceilings, measured in the run: float32 and bfloat16 matmul peaks, and the CPU's bf16 ISA.

Issue 17 puts the bf16, B=1 and stack targets as a share of what the machine can do, so the benchmark
measures that itself rather than quoting a data sheet (a virtual CPU's clock and its neighbours' load
are not on one).  The ceiling is one large square ``torch.mm`` (oneDNN/MKL: the closest thing to a
tight FMA loop this repository has; it reaches about 90% of the FMA units' rate on AVX-512 CPUs), at
1 thread and at the run's thread count, in float32 (the FMA peak) and in bfloat16 (the dot peak).

Whether the bf16 figure is a real dot-product peak depends on the CPU: ``vdpbf16ps`` needs
``avx512_bf16`` and AMX tiles need ``amx_bf16``; without them torch converts to float32 inside, and
its bf16 matmul runs well below its float32 one.  :func:`bf16_isa` reads the flags from
``/proc/cpuinfo`` so the report says which case the figures are.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

from ..testing import dtype_name
from .timing import matmul_gflops, peak_matmul_size

#: the dtypes whose ceilings the groups compare with
PEAK_DTYPES = (torch.float32, torch.bfloat16)
#: /proc/cpuinfo flags that decide what a bf16 (or fp16) product can run on
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")


def cpu_flags(path: str = "/proc/cpuinfo") -> Optional[set]:
    """The first CPU's feature flags, or None where /proc/cpuinfo is not there (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def bf16_isa(flags: Optional[set] = None) -> Dict[str, Optional[bool]]:
    """Each of :data:`BF16_FLAGS`: present or not (None: unknown)."""
    flags = cpu_flags() if flags is None else flags
    return {name: None if flags is None else name in flags for name in BF16_FLAGS}


def matmul_peak(n: int, dtype: torch.dtype, device: torch.device, threads: int, min_time: float,
                max_time: float) -> dict:
    """One ``n x n`` product timed: ``{"n", "gflops", "median_ms"}`` (the run's "peak matmul" line)."""
    gflops, timing = matmul_gflops(n, n, n, dtype, device, threads, min_time, max_time)
    return {"n": n, "gflops": gflops, "median_ms": timing.median * 1e3}


def thread_counts(threads: int) -> List[int]:
    """1 thread (a layer-direction of a future per-core stack) and the run's count."""
    return sorted({1, threads})


def measure(s, quick: bool, known: Optional[Dict[str, dict]] = None) -> dict:
    """The ceilings for the run's settings ``s``: ``{"n", "isa", "gflops": {dtype: {threads: GFLOP/s}}}``
    (thread counts as strings, so the JSON round-trips).  ``known``: the run's "peak matmul" figures
    (dtype -> :func:`matmul_peak`'s dict at the run's thread count), not measured again."""
    n = peak_matmul_size(s.device, quick)
    known = known or {}

    def ceiling(dtype: torch.dtype, threads: int) -> float:
        already = known.get(dtype_name(dtype))
        if threads == s.threads and already is not None and already["n"] == n:
            return already["gflops"]
        return matmul_peak(n, dtype, s.device, threads, s.min_time, s.max_time)["gflops"]

    gflops = {dtype_name(d): {str(t): ceiling(d, t) for t in thread_counts(s.threads)} for d in PEAK_DTYPES}
    return {"n": n, "isa": bf16_isa() if s.device.type == "cpu" else {}, "gflops": gflops}


def read_bandwidth(nbytes: int, device: torch.device, threads: int) -> Optional[float]:
    """GB/s at which ``threads`` read a buffer of ``nbytes`` that stays wherever that size fits (L1, L2, the
    last-level cache or DRAM): the best of 30 sums of the buffer read a few times over (an expanded view: one
    ATen call reads it ``reps`` times, so the call's own cost is a small share).  The "one cache read of the
    weights" of issue 17's per-step target; None off the CPU (a GPU step is not bound by this)."""
    if device.type != "cpu" or nbytes <= 0:
        return None
    n = max(1, nbytes // 4)
    reps = max(4, (8 << 20) // (4 * n))
    view = torch.rand(n).expand(reps, n)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            view.sum()
        best = float("inf")
        for _ in range(30):
            start = time.perf_counter()
            view.sum()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return reps * n * 4 / best / 1e9


def peak(peaks: dict, dtype: str, threads: int) -> Optional[float]:
    """The measured ceiling of ``dtype`` at ``threads`` (None when not measured)."""
    return peaks.get("gflops", {}).get(dtype, {}).get(str(threads)) if peaks else None


def share(gflops: Optional[float], peaks: dict, dtype: str, threads: int) -> Optional[float]:
    """``gflops`` as a fraction of the ``dtype`` ceiling at ``threads``."""
    ceiling = peak(peaks, dtype, threads)
    return None if gflops is None or not ceiling else gflops / ceiling


def describe(peaks: dict) -> str:
    """One line: each ceiling, then the ISA flags (what the bf16 figure is)."""
    parts = [f"{d} {t} thread{'s' if t != '1' else ''} {g:.1f} GFLOP/s"
             for d, by_threads in peaks["gflops"].items() for t, g in by_threads.items()]
    text = f"peaks ({peaks['n']}x{peaks['n']} matmul): " + ", ".join(parts)
    isa = peaks.get("isa") or {}
    if isa:
        text += "; CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no' if v is False else '?'}"
                                            for k, v in isa.items())
        if not isa.get("avx512_bf16") and not isa.get("amx_bf16"):
            text += " (no bf16 dot-product instructions: torch's bf16 matmul converts to float32 inside, so its " \
                    "figure is a conversion-bound rate, not a bf16 dot peak)"
    return text
