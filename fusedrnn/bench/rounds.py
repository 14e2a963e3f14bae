"""One group of the benchmark timed: torch.nn and each implementation on the same problem, in rounds.

A *bench* is what :func:`measure_group` times: an object with ``family``, ``shape`` (a
:class:`fusedrnn.testing.Shape`), ``dtype``, ``call(impl, mode)`` (the timed callable),
``unsupported(impl)`` (None or why not) and ``memory(impl, mode)`` (bytes and their kind, or
``(None, None)``).  The layer groups (:class:`fusedrnn.bench.cli.LayerBench`) and the per-call
overhead group (:mod:`fusedrnn.bench.overhead`) are both benches, so both are timed the same way
and report the same row (:func:`result_row`; keys listed in :mod:`fusedrnn.bench.report`).
"""

from __future__ import annotations

import statistics
from typing import Dict, List

from ..testing import dtype_name
from .timing import Timing, time_call

#: CPU timings are taken in this many rounds, each timing every implementation of a group in turn
#: with 1/ROUNDS of the time budget: a (virtual) CPU's speed drifts within seconds (benchmarks/RESULTS.md,
#: "measurements behind choices in the code"), and back-to-back blocks of one implementation then the
#: other would partly measure that drift.
CPU_ROUNDS = 3
#: on CUDA, calls faster than this are also timed as a CUDA graph (launch overhead would dominate)
GRAPH_BELOW_S = 0.010


def result_row(bench, mode: str, impl: str, **fields) -> dict:
    """One result row of ``bench`` (every key present, None where not measured), updated with ``fields``."""
    shape = bench.shape
    row = {"cell": bench.family, "T": shape.T, "B": shape.B, "I": shape.I, "H": shape.H,
           "dtype": dtype_name(bench.dtype), "mode": mode, "impl": impl, "median_ms": None, "q20_ms": None,
           "q80_ms": None, "samples": None, "cuda_graph": False, "flops": None, "gflops": None,
           "ratio_vs_torch": None, "matmul_fraction": None, "memory_bytes": None, "memory_kind": None, "status": "ok",
           "round_ms": None}
    row.update(fields)
    return row


def timed_fields(timing: Timing, flops: float) -> dict:
    return {"median_ms": timing.median * 1e3, "q20_ms": timing.q20 * 1e3, "q80_ms": timing.q80 * 1e3,
            "samples": timing.samples, "cuda_graph": timing.cuda_graph, "flops": flops,
            "gflops": flops / timing.median / 1e9}


def measure_group(bench, impls: List[str], mode: str, flops: float, failed: set, s) -> List[dict]:
    """One row per implementation; ``ratio_vs_torch`` is the median over rounds of the per-round
    ratio torch.nn / this (the first implementation is torch.nn).  ``failed``: the
    ``(impl, family, shape, dtype)`` that failed the correctness check (reported, not timed); ``s``: the
    run's settings (device, threads, time budget)."""
    rounds = CPU_ROUNDS if s.device.type == "cpu" else 1
    timings: Dict[str, List[Timing]] = {impl: [] for impl in impls}
    rows: Dict[str, dict] = {}
    for _ in range(rounds):
        for impl in impls:
            if impl in rows:  # failed, unsupported or broken: reported once, not timed again
                continue
            outcome = _time_once(bench, impl, mode, failed, s, s.min_time / rounds, s.max_time / rounds)
            if isinstance(outcome, dict):
                rows[impl] = outcome
            else:
                timings[impl].append(outcome)
    group = []
    for impl in impls:
        if impl in rows:
            group.append(rows[impl])
            continue
        row = result_row(bench, mode, impl, round_ms=[t.median * 1e3 for t in timings[impl]],
                         **timed_fields(_merged(timings[impl]), flops))
        try:
            row["memory_bytes"], row["memory_kind"] = bench.memory(impl, mode)
        except Exception as exc:  # one broken implementation must not hide the others' figures
            row = result_row(bench, mode, impl, status=f"error: {type(exc).__name__}: {exc}")
        if row["median_ms"] is not None:
            row["ratio_vs_torch"] = round_ratio(row_of(impls[0], timings), row)
        group.append(row)
    return group


def row_of(impl: str, timings: Dict[str, List[Timing]]) -> dict:
    """Just the per-round medians of ``impl``, as a row holds them (``round_ms``)."""
    return {"round_ms": [t.median * 1e3 for t in timings[impl]]}


def round_ratio(base: dict, row: dict):
    """``base``'s time / ``row``'s: the median over the rounds of the per-round ratio (None unless both rows
    were timed in the same rounds).  Each round times every implementation of a group in turn, so a ratio
    within a round is taken at one speed of a drifting CPU; the median drops a round a burst of other work
    spoiled."""
    mine, theirs = row.get("round_ms"), base.get("round_ms")
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    return statistics.median(t / m for t, m in zip(theirs, mine))


def _merged(rounds: List[Timing]) -> Timing:
    """Rounds of one implementation as one figure: median of the round medians, widest quantiles."""
    return Timing(statistics.median(t.median for t in rounds), min(t.q20 for t in rounds),
                  max(t.q80 for t in rounds), sum(t.samples for t in rounds),
                  any(t.cuda_graph for t in rounds))


def _time_once(bench, impl: str, mode: str, failed: set, s, min_time: float, max_time: float):
    """A Timing, or the finished row of an implementation that cannot be timed."""
    if (impl, bench.family, bench.shape, bench.dtype) in failed:
        return result_row(bench, mode, impl, status="FAILED the check: not timed")
    why = bench.unsupported(impl)
    if why is not None:
        return result_row(bench, mode, impl, status=f"unsupported: {why}")
    try:
        return time_call(bench.call(impl, mode), s.device, s.threads, min_time, max_time,
                         graph_below=GRAPH_BELOW_S if s.device.type == "cuda" else 0.0)
    except Exception as exc:  # one broken implementation must not hide the others' figures
        return result_row(bench, mode, impl, status=f"error: {type(exc).__name__}: {exc}")
