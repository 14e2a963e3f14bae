"""The run's verdict and exit status, and its report: report.md and report.json in the output folder."""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .card import card_title, extension_line, nvidia_smi_line, versions_line
from .runner import Result
from .steps import Context

EXIT_FAILED, EXIT_NO_GPU, EXIT_INTERRUPTED = 1, 3, 130


def verdict(results: Sequence[Result], ctx: Context) -> Tuple[str, int]:
    if any(r.failed for r in results):
        return "FAILED", EXIT_FAILED
    if ctx.no_gpu:
        return "NO GPU: nothing was checked", EXIT_NO_GPU
    return "PASSED", 0


def newest(out: Path, pattern: str, since: float) -> Optional[Path]:
    found = sorted((p for p in glob.glob(str(out / pattern)) if os.path.getmtime(p) >= since), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def report_markdown(plan: str, ctx: Context, results: Sequence[Result], budget_s: Optional[float],
                    seconds: float, when: str) -> str:
    word, _ = verdict(results, ctx)
    budget = f" of a {budget_s:.0f} s budget" if budget_s else ""
    lines = [f"# fusedrnn {plan}: {word}", "",
             f"## GPU: {card_title(ctx.card)}: make {plan}, {when}", "",
             f"- {nvidia_smi_line(ctx.card)}",
             f"- {versions_line(ctx.card)}",
             f"- {extension_line(ctx.card)}", ""]
    if ctx.no_gpu:
        lines += [f"**{ctx.no_gpu}**", ""]
    lines += [f"Total {seconds:.0f} s{budget}.  Every step's whole output: steps.log.", "",
              "| # | step | status | seconds | timeout | summary |", "|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r.step} | {r.status} | {r.seconds:.0f} | {r.timeout_s if r.timeout_s is not None else '-'} "
              f"| {r.summary} |" for i, r in enumerate(results, 1)]
    for i, r in enumerate(results, 1):
        lines += ["", f"### {i}. {r.step}: {r.status}", "", f"`{r.command}`"]
        if r.tail:
            lines += ["", "```", r.tail, "```"]
    bench_md = newest(ctx.out, "bench-cuda-*.md", ctx.started)
    if bench_md:
        lines += ["", "## Benchmark", "", bench_md.read_text()]
    return "\n".join(lines) + "\n"


def write_report(plan: str, ctx: Context, results: Sequence[Result], budget_s: Optional[float],
                 seconds: float) -> Path:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    word, status = verdict(results, ctx)
    path = ctx.out / "report.md"
    path.write_text(report_markdown(plan, ctx, results, budget_s, seconds, when))
    payload = {"plan": plan, "timestamp": when, "verdict": word, "exit_status": status, "seconds": round(seconds, 1),
               "budget_s": budget_s, "card": ctx.card, "steps": [asdict(r) for r in results]}
    (ctx.out / "report.json").write_text(json.dumps(payload, indent=1) + "\n")
    return path
