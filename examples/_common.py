"""What every example shares: its command line, progress bar, plots and final report.

Each example is a script (``python examples/<name>.py``); this module sits
beside them, so ``import _common`` finds it from the script's own directory.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Dict

import matplotlib

matplotlib.use("Agg")  # files only: the examples run on headless machines and in the test suite

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.table import Table  # noqa: E402

console = Console()

#: the repository root (examples/ lives directly under it)
REPO_ROOT = Path(__file__).resolve().parent.parent


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every example takes: --device, --out, --quick, --seed, --threads."""
    p = argparse.ArgumentParser(prog=f"examples/{name}.py", description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to train on (default: cuda when available, else cpu)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "out" / name,
                   help="directory for the plots and report.json (created if missing)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and a few steps: a smoke run of a few seconds (used by the test suite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (data, initialisation, sampling)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: these models are small, and on a busy machine "
                        "idle OpenMP threads spin-wait: a small GRU step was seen 70x slower with 2 threads "
                        "than with 1 at a load average of 9 on 2 cores); 0 keeps torch's default")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Seed, threads, output directory; fusedrnn's 'which backend runs' notice shown once, not per call."""
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("once", message="fusedrnn: using backend")
    return torch.device(args.device)


def progress() -> Progress:
    """A rich progress bar with a free-text field (``info``) for the running loss."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
    )


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Stopwatch:
    """Wall-clock seconds, synchronising the GPU first so its queued work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.now()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self.now() - self.start


def report(args: argparse.Namespace, title: str, results: Dict) -> Path:
    """Print ``results`` as a table and write them, with the run's settings, to ``<out>/report.json``."""
    table = Table(title=title, show_header=False)
    for key, value in results.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = args.out / "report.json"
    path.write_text(json.dumps({"title": title, "settings": settings, "results": results,
                                "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "cpu_count": os.cpu_count()}, indent=2, default=str))
    console.print(f"report and plots written to {args.out}")
    return path
