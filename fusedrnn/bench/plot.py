"""The benchmark's plot: speedup over torch.nn across the shape sweep, one line per backend.

One panel per (cell, mode); the x axis is the shapes in the order they ran
(a preset sweep varies one of T, B, H, so it reads as a curve along that
size), the y axis is torch.nn's time divided by the backend's (log scale), and
the dashed line at 1 is torch.nn itself.  matplotlib is optional: without it
no PNG is written and the caller says so.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple


def _shape_label(r: dict) -> str:
    return f"T{r['T']} B{r['B']}\nI{r['I']} H{r['H']}"


def plot_speedups(results: Sequence[dict], path: str, title: str) -> Optional[str]:
    """Write the PNG to ``path``; return None if matplotlib is missing, else the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return None
    speedup = FuncFormatter(lambda y, _: f"{y:.3g}x")

    timed = [r for r in results if r.get("ratio_vs_torch") is not None and r["impl"] != "torch.nn"]
    panels: Dict[Tuple[str, str], List[dict]] = {}
    for r in timed:
        panels.setdefault((r["cell"], r["mode"]), []).append(r)
    in_run_order = lambda values: list(dict.fromkeys(values))  # noqa: E731
    cells = in_run_order(c for c, _ in panels) or ["-"]
    modes = in_run_order(m for _, m in panels) or ["-"]
    fig, axes = plt.subplots(len(cells), len(modes), figsize=(6.5 * len(modes), 3.8 * len(cells)),
                             squeeze=False)
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            rows = panels.get((cell, mode), [])
            labels = list(dict.fromkeys(_shape_label(r) for r in rows))
            lines: Dict[str, List[Tuple[int, float]]] = {}
            for r in rows:
                name = r["impl"] if len({x["dtype"] for x in rows}) == 1 else f"{r['impl']} {r['dtype']}"
                lines.setdefault(name, []).append((labels.index(_shape_label(r)), r["ratio_vs_torch"]))
            for name, points in sorted(lines.items()):
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, marker="o", label=name)
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="torch.nn")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(speedup)
            ax.yaxis.set_minor_formatter(speedup)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            if rows:  # at least 0.5x..2x, so small differences do not look like large ones
                ratios = [r["ratio_vs_torch"] for r in rows]
                ax.set_ylim(min(0.5, min(ratios) / 1.25), max(2.0, max(ratios) * 1.25))
            else:
                ax.text(0.5, 0.5, "no fusedrnn backend was timed", ha="center", transform=ax.transAxes)
            ax.set_title(f"{cell} {mode}" if rows else "")
            ax.set_ylabel("speedup vs torch.nn")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
