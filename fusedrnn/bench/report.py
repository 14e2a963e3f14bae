"""The benchmark's figures as a table (terminal and markdown), JSON and CSV.

One result row per (cell, shape, dtype, mode, implementation), with these keys:
``cell, T, B, I, H, dtype, mode, impl, median_ms, q20_ms, q80_ms, samples,
cuda_graph, flops, gflops, ratio_vs_torch, matmul_fraction, memory_bytes,
memory_kind, status``.  ``ratio_vs_torch`` is torch.nn's median time divided
by this implementation's (above 1: faster than torch.nn); ``matmul_fraction``
is the GFLOP/s achieved as a fraction of one torch matmul doing the forward's
FLOPs in the same run.
"""

from __future__ import annotations

import csv
import json
import math
from typing import Callable, Dict, List, Optional, Sequence

from .console import markdown_table, print_table
from .peaks import describe

#: what the "vs torch.nn" column means (fusedrnn.bench times CPU groups in alternating rounds)
RATIO_CAPTION = ("vs torch.nn = torch.nn time / this time, the median of its value in each timing round "
                 "(on CPU 3 rounds, each timing every implementation in turn; median ms is the median of the "
                 "rounds' medians)")

COLUMNS = ["cell", "T,B,I,H", "dtype", "mode", "impl", "median ms", "q20-q80 ms", "vs torch.nn", "GFLOP/s",
           "% matmul", "memory", "note"]
CSV_FIELDS = ["cell", "T", "B", "I", "H", "dtype", "mode", "impl", "median_ms", "q20_ms", "q80_ms", "samples",
              "cuda_graph", "flops", "gflops", "ratio_vs_torch", "matmul_fraction", "memory_bytes", "memory_kind",
              "status"]
#: machine and version columns repeated on every CSV row, so a CSV file stands alone
CSV_CONTEXT = ["cpu_model", "torch_threads", "gpu", "torch", "triton", "git_commit", "timestamp"]


def threads_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _num(value: Optional[float], fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ms(value: float) -> str:
    """Milliseconds with three significant digits, without exponents."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def ms_text(ms: Optional[float]) -> str:
    return "-" if ms is None else _ms(ms)


def spread_text(r: dict, unit: Callable[[Optional[float]], str] = ms_text) -> str:
    """A row's 20%-80% quantiles, in ``unit``'s format."""
    return "-" if r.get("q20_ms") is None else f"{unit(r['q20_ms'])}-{unit(r['q80_ms'])}"


def gflops_text(r: dict) -> str:
    return _num(r.get("gflops"), ".3g")


def us_text(ms: Optional[float]) -> str:
    """Milliseconds shown in microseconds (the small-call groups)."""
    return "-" if ms is None else f"{ms * 1e3:.0f}" if ms >= 0.1 else f"{ms * 1e3:.3g}"


def ratio_text(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def percent_text(fraction: Optional[float]) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}"


def ratio_style(r: dict, key: str = "ratio_vs_torch", base: str = "torch.nn") -> Optional[str]:
    """A row's colour: red when it failed, none for the baseline, green at or above 1x, else yellow."""
    if r["status"] != "ok":
        return "bold red"
    if r["impl"] == base or r.get(key) is None:
        return None
    return "green" if r[key] >= 1.0 else "yellow"


def section(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    """A group's section of the run's markdown report: a heading, the table, its caption."""
    return "\n".join(["", f"#### {title}", "", markdown_table(columns, rows), "", caption + ".", ""])


def _row_cells(r: dict) -> List[str]:
    timed = r.get("median_ms") is not None
    spread = f"{_ms(r['q20_ms'])}-{_ms(r['q80_ms'])}" if timed else "-"
    note = r["status"] if r["status"] != "ok" else ("CUDA graph" if r.get("cuda_graph") else "")
    if r.get("memory_kind") and r.get("memory_bytes") is not None:
        memory = human_bytes(r["memory_bytes"])
    else:
        memory = "-"
    return [r["cell"], f"{r['T']},{r['B']},{r['I']},{r['H']}", r["dtype"], r["mode"], r["impl"],
            _ms(r["median_ms"]) if timed else "-", spread, _num(r.get("ratio_vs_torch"), ".2f") + ("x" if
            r.get("ratio_vs_torch") is not None else ""), _num(r.get("gflops"), ".3g"),
            _num(None if r.get("matmul_fraction") is None else 100 * r["matmul_fraction"], ".0f"), memory, note]


def _style(r: dict) -> Optional[str]:
    if r["status"] != "ok":
        return "bold red"
    if r["impl"] == "torch.nn" or r.get("ratio_vs_torch") is None:
        return "dim" if r["impl"] == "matmul" else None
    return "green" if r["ratio_vs_torch"] >= 1.0 else "yellow"


def memory_caption(results: Sequence[dict]) -> str:
    kinds = sorted({r["memory_kind"] for r in results if r.get("memory_kind")})
    return f"memory: {', '.join(kinds)}" if kinds else "memory: not measured"


def print_results(results: Sequence[dict], peak: Dict[str, dict], title: str) -> None:
    peak_text = "; ".join(f"{d}: {p['gflops']:.1f} GFLOP/s ({p['n']}x{p['n']} matmul)" for d, p in peak.items())
    print_table(title, COLUMNS, [_row_cells(r) for r in results], [_style(r) for r in results],
                caption=f"peak matmul {peak_text}; {memory_caption(results)}; "
                        f"{RATIO_CAPTION}")


def markdown(results: Sequence[dict], payload: dict) -> str:
    """A markdown report: machine, versions, command, table (for RESULTS.md and gpu-check)."""
    m, v, s = payload["machine"], payload["versions"], payload["settings"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    lines = [
        f"### {m['cpu_model']}{gpu}, {threads_text(m['torch_threads'])} ({payload['timestamp']})",
        "",
        f"Command: `{s['command']}`  ",
        f"torch {v['torch']}, triton {v['triton']}, python {v['python']}, fusedrnn commit {v['git_commit']}  ",
        "Peak matmul: " + "; ".join(f"{d} {p['gflops']:.1f} GFLOP/s ({p['n']}x{p['n']})"
                                     for d, p in payload["peak_matmul"].items()) + "  ",
        *([f"Ceilings: {describe(payload['peaks'])}  "] if payload.get("peaks") else []),
        f"Correctness check before timing: {payload['check']['status']}  ",
        *([f"**Warning:** {payload['warning']}"] if payload.get("warning") else []),
    ]
    if results:  # none with --shapes none (the per-call overhead group alone)
        lines += [
            "",
            markdown_table(COLUMNS, [_row_cells(r) for r in results]),
            "",
            f"{memory_caption(results)}; {RATIO_CAPTION}; "
            "% matmul = GFLOP/s as a share of one torch matmul of the forward's FLOPs in the same run.",
        ]
    return "\n".join(lines) + "\n"


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)


def write_csv(path: str, results: Sequence[dict], payload: dict) -> None:
    context = {**payload["machine"], **payload["versions"], "timestamp": payload["timestamp"]}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + CSV_CONTEXT)
        writer.writeheader()
        for r in results:
            writer.writerow({**{k: r.get(k) for k in CSV_FIELDS}, **{k: context.get(k) for k in CSV_CONTEXT}})
