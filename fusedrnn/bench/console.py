"""Tables and progress for the benchmark and check commands: rich when installed, plain text otherwise.

rich is an optional dependency (``pip install fusedrnn[bench]``); the GPU
machines this project is validated on may not have it and have no network, so
every command also works, less prettily, without it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, List, Optional, Sequence

try:  # optional
    import rich.console
    import rich.progress
    import rich.table
except ImportError:  # pragma: no cover - exercised on machines without rich
    rich = None


#: width of tables written to a file or pipe (a terminal's own width is used on a terminal)
LOG_WIDTH = 200


def console():
    """A rich Console on stdout (wide when not a terminal, so tables stay readable in logs), or None."""
    if rich is None:
        return None
    return rich.console.Console() if sys.stdout.isatty() else rich.console.Console(width=LOG_WIDTH)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                styles: Optional[Sequence[Optional[str]]] = None, caption: Optional[str] = None) -> None:
    """Print ``rows`` under ``columns``; ``styles`` colours whole rows (rich only)."""
    if rich is not None:
        table = rich.table.Table(title=title, caption=caption, show_lines=False)
        for i, name in enumerate(columns):
            table.add_column(name, justify="left" if i == 0 or not _numeric_column(rows, i) else "right")
        for i, row in enumerate(rows):
            table.add_row(*row, style=(styles[i] if styles else None))
        console().print(table)
        return
    print(format_plain_table(title, columns, rows, caption))


def format_plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                       caption: Optional[str] = None) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
              for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [title, line(columns), line("-" * w for w in widths)] + [line(r) for r in rows]
    if caption:
        out.append(caption)
    return "\n".join(out)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (for reports and RESULTS.md)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _numeric_column(rows: Sequence[Sequence[str]], i: int) -> bool:
    return any(str(r[i])[:1].isdigit() for r in rows)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[str], None]]:
    """A context giving ``advance(label)``: a rich progress bar on a terminal, else one line per step."""
    if rich is not None and sys.stdout.isatty():
        with rich.progress.Progress(
            rich.progress.TextColumn("[progress.description]{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TimeElapsedColumn(),
            rich.progress.TextColumn("{task.fields[label]}"),
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total, label="")
            yield lambda label: bar.update(task, advance=1, label=label)
        return
    done: List[int] = [0]
    every = max(1, total // 20)  # about twenty lines, not one per step, in logs

    def advance(label: str) -> None:
        done[0] += 1
        if done[0] % every == 0 or done[0] == total:
            print(f"[{done[0]}/{total}] {description}: {label}", file=sys.stderr, flush=True)

    yield advance
