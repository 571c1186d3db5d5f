"""Seaborn plots of the leaderboard, written as PNG files into ``DIR/plots/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from mixbench.fileio import atomic_write  # noqa: E402
from mixbench.leaderboard.markdown import format_params  # noqa: E402
from mixbench.leaderboard.tables import Table  # noqa: E402

# Fixed metadata so that regenerating a plot from the same results gives the same bytes.
_PNG_METADATA = {"Software": None}


def _label(row_method: str, params: dict, multi: bool) -> str:
    return f"{row_method}\n{format_params(params)}" if multi else row_method


def top1_bar_chart(table: Table, path: Path) -> None:
    """Bar chart of top-1 per method with standard-deviation error bars over seeds."""
    methods = [r.method for r in table.rows]
    multi = len(set(methods)) < len(methods)
    labels, values = [], []
    for row in table.rows:
        label = _label(row.method, row.params, multi)
        for v in row.metrics.get("top1", []):
            labels.append(label)
            values.append(100 * v)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(table.rows) + 2), 4.0), dpi=100)
    sns.barplot(x=labels, y=values, errorbar="sd", ax=ax, color="#4C72B0", capsize=0.2)
    ax.set_ylabel("test top-1 (%)")
    ax.set_xlabel("")
    if values:
        low = max(0.0, min(values) - 10)
        ax.set_ylim(low, min(100.0, max(values) + 5))
    ax.set_title(f"{table.preset} · {table.dataset} · {table.model}")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata=_PNG_METADATA))
    plt.close(fig)


def write_plots(tables: list[Table], out_dir: Path) -> dict[str, list[str]]:
    """Draw every table's plots into ``out_dir/plots``; returns their paths relative to out_dir."""
    written: dict[str, list[str]] = {}
    plot_dir = out_dir / "plots"
    for table in tables:
        name = f"{table.slug}-top1.png"
        top1_bar_chart(table, plot_dir / name)
        written.setdefault(table.slug, []).append(f"plots/{name}")
    return written
