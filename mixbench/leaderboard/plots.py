"""Seaborn plots of the leaderboard, written as PNG files into ``DIR/plots/``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mixbench.fileio import atomic_write  # noqa: E402
from mixbench.leaderboard.markdown import cost_vs_erm, device_label  # noqa: E402
from mixbench.leaderboard.protocol import describe_hardware, hardware_of  # noqa: E402
from mixbench.leaderboard.tables import Table  # noqa: E402
from mixbench.names import file_part  # noqa: E402

# Fixed metadata so that regenerating a plot from the same results gives the same bytes.
_PNG_METADATA = {"Software": None}
_COLOURS = sns.color_palette("deep", 10).as_hex()
#: Learning curves of tables with more rows than this put their legend beside the axes.
MAX_NAMED_POINTS = 8


def _palette(n: int) -> list[str]:
    """``n`` colours: seaborn's "deep" palette, or evenly spaced hues when it has too few."""
    return _COLOURS[:n] if n <= len(_COLOURS) else sns.color_palette("husl", n).as_hex()


def _key_width(n: int) -> float:
    """Extra figure width (inches) for a legend beside the axes of ``n`` rows."""
    return 3.0 if n > MAX_NAMED_POINTS else 0.0


def row_labels(table: Table) -> list[str]:
    """One label per row, the row's name in the table without Markdown: ``multimix``,
    ``multimix [ce]``, ``multimix [alpha=0.05]``, ``cutmix v1``, ``erm [2× epochs]``, with
    the device where the table mixes CPU and GPU cells (``mixup (GPU)``)."""
    return [device_label(row, table, code=False) for row in table.rows]


def top1_bar_chart(table: Table, path: Path) -> None:
    """Horizontal bars of mean top-1 per row from 0 %, best first, with the standard deviation
    over seeds as error bars, ERM's mean as a dashed line, and each bar's mean ± std printed."""
    ranked = sorted(
        (
            (r.mean("top1"), r.std("top1"), len(r.seeds), label)
            for r, label in zip(table.rows, row_labels(table))
            if r.mean("top1") is not None
        ),
        key=lambda bar: (bar[0], bar[3]),  # ties by name: a one-seed row has no std
    )
    height = max(3.0, 1.4 + 0.35 * len(ranked))
    fig, ax = plt.subplots(figsize=(8.0, height), dpi=100)
    ys = list(range(len(ranked)))
    means = [100 * m for m, _, _, _ in ranked]
    stds = [100 * s if s is not None else 0.0 for _, s, _, _ in ranked]
    ax.barh(ys, means, xerr=stds, color=_COLOURS[0], capsize=3, error_kw={"elinewidth": 1})
    ax.set_yticks(ys, [label for _, _, _, label in ranked])
    for y, (mean, std, seeds, _) in zip(ys, ranked):
        spread = f" ± {100 * std:.2f}" if std is not None else ""
        ax.text(
            100 * mean + (100 * std if std else 0) + 1,
            y,
            f"{100 * mean:.2f}{spread} ({seeds} seed{'s' if seeds != 1 else ''})",
            va="center",
            fontsize=7,
        )
    ref = table.reference()
    if ref is not None and ref.mean("top1") is not None:
        ax.axvline(100 * ref.mean("top1"), color="#C44E52", linestyle="--", linewidth=1)
        ax.text(100 * ref.mean("top1"), len(ranked) - 0.4, " ERM", color="#C44E52", fontsize=7)
    ax.set_xlim(0, 118)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("test top-1 (%), last epoch: mean ± standard deviation over seeds")
    ax.set_title(f"{table.preset} · {table.display_dataset} · {table.model}", fontsize=10)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, format="png", metadata=_PNG_METADATA, bbox_inches="tight"),
    )
    plt.close(fig)


def _title(table: Table, what: str) -> str:
    return f"{what} · {table.preset} · {table.display_dataset} · {table.model}"


def reliability_diagrams(table: Table, path: Path) -> bool:
    """One reliability diagram per row: accuracy per confidence bin against the diagonal.

    The bins of all seeds are pooled; bar heights are the bins' accuracies, the red outline the
    gap to their mean confidence. Returns False (and writes nothing) when no row has bins.
    """
    rows = [(label, r) for label, r in zip(row_labels(table), table.rows) if r.reliability]
    if not rows:
        return False
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            nrows, cols, figsize=(3.0 * cols, 3.0 * nrows), dpi=100, squeeze=False
        )
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, (label, row) in zip(axes.flat, rows):
        bins = [b for b in row.reliability_bins() if b["count"]]
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        widths = [b["upper"] - b["lower"] for b in bins]
        accuracy = [b["accuracy"] for b in bins]
        confidence = [b["confidence"] for b in bins]
        ax.bar(
            centres, accuracy, width=widths, color=_COLOURS[0], edgecolor="white", label="accuracy"
        )
        ax.bar(
            centres,
            [c - a for c, a in zip(confidence, accuracy)],
            bottom=accuracy,
            width=widths,
            color="none",
            edgecolor="#C44E52",
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ece = row.mean("ece")
        ax.set_title(label + (f" (ECE {100 * ece:.1f}%)" if ece is not None else ""), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(table, "reliability"), fontsize=10)
    _save(fig, path)
    return True


def robustness_measures() -> list[tuple[Any, str]]:
    """The measures drawn against clean top-1, ``(column spec, axis label)``: every registered
    evaluator's columns that name a plot axis, in the order the evaluators run."""
    from mixbench.bench.evaluators import get_evaluator, list_evaluators

    return [
        (spec, spec.plot)
        for name in list_evaluators()
        for spec in get_evaluator(name).columns
        if spec.plot
    ]


#: Marker shapes cycled with the colours, so that rows stay apart in grey print too.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


def _scatter(ax: Any, points: list[tuple[float, float, str]], order: list[str]) -> None:
    """One marker per point, its colour and shape fixed by the row's place in ``order`` (every
    row label of the table), labelled through the legend, never by text beside the point (names
    printed at the points overprint each other where rows lie close)."""
    colours = _palette(len(order))
    for x, y, label in points:
        i = order.index(label)
        ax.scatter(
            [x], [y], color=colours[i], marker=_MARKERS[i % len(_MARKERS)], s=50, label=label,
            edgecolors="white", linewidths=0.5, zorder=3,
        )  # fmt: skip
    ax.margins(0.15)


def _legend_beside(fig: Any, ax: Any) -> None:
    """The rows' legend to the right of the axes (one legend for the whole figure)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)


def accuracy_vs_robustness(table: Table, path: Path) -> bool:
    """Clean top-1 against each robustness measure present, one panel per measure, one point
    per row. Returns False (and writes nothing) when no row has a robustness measure."""
    labels = row_labels(table)
    panels = []
    for spec, axis in robustness_measures():
        scale = 100 if spec.fmt in ("pct", "pp") else 1
        points = [
            (100 * r.mean("top1"), scale * spec.row_value(r), label)
            for r, label in zip(table.rows, labels)
            if r.mean("top1") is not None and spec.row_value(r) is not None
        ]
        if points:
            panels.append((axis, points))
    if not panels:
        return False
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(4.0 * len(panels), 3.8),
            dpi=100,
            squeeze=False,
        )
    for ax, (axis, points) in zip(axes.flat, panels):
        _scatter(ax, points, labels)
        ax.set_xlabel("clean top-1 (%)")
        ax.set_ylabel(axis)
    _legend_beside(fig, axes.flat[0])
    fig.suptitle(_title(table, "accuracy vs robustness"), fontsize=10)
    _save(fig, path)
    return True


def accuracy_vs_cost(table: Table, path: Path) -> bool:
    """Top-1 against training time on the hardware the cells recorded: relative to ERM's
    (``cost ×ERM``, CPU time where recorded) when the table has ERM, for the rows that ran on
    the same kind of machine; else wall seconds.

    Returns False (and writes nothing) when no row has both."""
    ref = table.reference()
    base = ref.timing("train_seconds") if ref is not None else None
    labels = row_labels(table)
    points = []
    for row, label in zip(table.rows, labels):
        top1 = row.mean("top1")
        # Relative to ERM only where both ran on the same kind of machine (as the table).
        cost = cost_vs_erm(row, table) if base else row.timing("train_seconds")
        if cost is None or top1 is None:
            continue
        points.append((cost, 100 * top1, label))
    if not points:
        return False
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    _scatter(ax, points, labels)
    _legend_beside(fig, ax)
    machines = hardware_of(table)
    where = (
        f"on {describe_hardware(machines[0])}"
        if len(machines) == 1
        else f"on the recorded hardware ({len(machines)} machines)"
        if machines
        else "on the recorded hardware"
    )
    what = (
        "training time × ERM's (CPU time where recorded, else wall time)"
        if base
        else "training wall time (s)"
    )
    ax.set_xlabel(f"{what}\n{where}", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(_title(table, "accuracy vs training cost"), fontsize=10)
    _save(fig, path)
    return True


def learning_curves(table: Table, path: Path) -> bool:
    """Test top-1 per evaluated epoch, one line per row (mean over seeds).

    Returns False (and writes nothing) when no row has a history."""
    epochs, values, names = [], [], []
    for row, label in zip(table.rows, row_labels(table)):
        for epoch, top1 in row.curve():
            epochs.append(epoch)
            values.append(100 * top1)
            names.append(label)
    if not epochs:
        return False
    order = list(dict.fromkeys(names))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.0 + _key_width(len(order)), 4.2), dpi=100)
    sns.lineplot(
        x=epochs,
        y=values,
        hue=names,
        hue_order=order,
        palette=_palette(len(order)),
        marker="o",
        errorbar=None,
        ax=ax,
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(_title(table, "learning curves"), fontsize=10)
    if len(order) > MAX_NAMED_POINTS:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    return True


#: Every plot of a table after the top-1 bar chart: (file suffix, function).
PLOTS = (
    ("reliability", reliability_diagrams),
    ("robustness", accuracy_vs_robustness),
    ("cost", accuracy_vs_cost),
    ("curves", learning_curves),
)


def write_plots(tables: list[Table], out_dir: Path) -> dict[str, list[str]]:
    """Draw every table's plots into ``out_dir/plots``; returns their paths relative to out_dir.

    The top-1 bar chart comes first; the others are drawn when the results hold their data.
    """
    written: dict[str, list[str]] = {}
    plot_dir = out_dir / "plots"
    for table in tables:
        name = f"{table.slug}-top1.png"
        top1_bar_chart(table, _inside(plot_dir, name))
        written.setdefault(table.slug, []).append(f"plots/{name}")
        for suffix, draw in PLOTS:
            name = f"{table.slug}-{suffix}.png"
            if draw(table, _inside(plot_dir, name)):
                written[table.slug].append(f"plots/{name}")
    return written


def _inside(folder: Path, name: str) -> Path:
    """``folder / name`` where ``name`` is one plain file name (it cannot leave ``folder``)."""
    if name != file_part(name):
        raise ValueError(f"plot file name {name!r} is not a plain file name")
    return folder / name
