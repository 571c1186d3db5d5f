"""Markdown rendering of leaderboard tables (tabulate), best value of each column in bold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from mixbench.leaderboard.legend import DASH, legend
from mixbench.leaderboard.protocol import describe_table, seeds_of, short_run_warning
from mixbench.leaderboard.reference import render_reference
from mixbench.leaderboard.tables import Row, Table


@dataclass(frozen=True)
class Column:
    """A leaderboard column: header, how to get the row's value, how to print it, which is best.

    An ``optional`` column is shown only when some row of the table has a value for it.
    """

    header: str
    value: Callable[[Row, Table], float | None]
    text: Callable[[Row, Table], str]
    higher_is_better: bool | None = True
    optional: bool = False


def _pct(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f}"


def _mean_std(row: Row, name: str) -> str:
    mean, std = row.mean(name), row.std(name)
    if mean is None:
        return DASH
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def _delta_erm(row: Row, table: Table) -> float | None:
    ref = table.reference()
    mean = row.mean("top1")
    if ref is None or mean is None or ref.mean("top1") is None:
        return None
    return mean - ref.mean("top1")


def _cost_erm(row: Row, table: Table) -> float | None:
    """Training time relative to ERM's in the same table (mean seconds over seeds)."""
    ref = table.reference()
    seconds = row.timing("train_seconds")
    base = ref.timing("train_seconds") if ref is not None else None
    if seconds is None or not base:
        return None
    return seconds / base


def _number(x: float | None, fmt: str) -> str:
    return DASH if x is None else format(x, fmt)


def _metric_pct(name: str) -> tuple[Callable[[Row, Table], float | None], Callable[..., str]]:
    return (lambda r, t: r.mean(name)), (lambda r, t: _pct(r.mean(name)))


def describe_params(row: Row) -> str:
    """The row's parameters and where they came from: defaults, the paper's set, or tuning."""
    text = format_params(row.params)
    if row.param_set.startswith("best:"):
        return f"{text} (tuned: study `{row.param_set[5:]}`)"
    if row.param_set != "default":
        return f"{text} ({row.param_set} set)"
    return text


def format_params(params: dict[str, Any]) -> str:
    """``alpha=1.0, prob=0.5``; a dash for a method without parameters."""
    if not params:
        return DASH
    parts = []
    for key, value in sorted(params.items()):
        if isinstance(value, (list, tuple)):
            value = "(" + ",".join(str(v) for v in value) + ")"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


COLUMNS: list[Column] = [
    Column("top-1 (%)", lambda r, t: r.mean("top1"), lambda r, t: _mean_std(r, "top1")),
    Column(
        "Δ ERM (pp)",
        _delta_erm,
        lambda r, t: DASH if _delta_erm(r, t) is None else f"{100 * _delta_erm(r, t):+.2f}",
    ),
    Column("best-epoch top-1 (%)", *_metric_pct("best_top1")),
    Column(
        "NLL",
        lambda r, t: r.mean("nll"),
        lambda r, t: _number(r.mean("nll"), ".3f"),
        False,
    ),
    Column("ECE (%)", *_metric_pct("ece"), False),
    Column("OE (%)", *_metric_pct("oe"), False),
    Column(
        "conf. − acc. (pp)",
        lambda r, t: r.confidence_gap(),
        lambda r, t: DASH if r.confidence_gap() is None else f"{100 * r.confidence_gap():+.2f}",
        None,
        optional=True,
    ),
    Column("FGSM (%)", *_metric_pct("fgsm_top1")),
    Column("PGD (%)", *_metric_pct("pgd_top1")),
    Column("corr. official (%)", *_metric_pct("corruption_official_top1")),
    Column("corr. generated (%)", *_metric_pct("corruption_generated_top1")),
    Column(
        "align.",
        lambda r, t: r.mean("alignment"),
        lambda r, t: _number(r.mean("alignment"), ".3f"),
        False,
        optional=True,
    ),
    Column(
        "unif.",
        lambda r, t: r.mean("uniformity"),
        lambda r, t: _number(r.mean("uniformity"), ".3f"),
        False,
        optional=True,
    ),
    Column(
        "train img/s",
        lambda r, t: r.timing("train_images_per_s"),
        lambda r, t: _number(r.timing("train_images_per_s"), ".0f"),
    ),
    Column(
        "cost ×ERM",
        _cost_erm,
        lambda r, t: DASH if _cost_erm(r, t) is None else f"{_cost_erm(r, t):.2f}",
        False,
    ),
]


def table_columns(table: Table) -> list[Column]:
    """The columns shown for ``table``: every column, less optional ones no row has."""
    return [
        col
        for col in COLUMNS
        if not col.optional or any(col.value(r, table) is not None for r in table.rows)
    ]


def render_table(table: Table) -> str:
    """The Markdown table of one group, best value per column in bold."""
    columns = table_columns(table)
    best: dict[str, float] = {}
    for col in columns:
        if col.higher_is_better is None:
            continue
        values = [v for r in table.rows if (v := col.value(r, table)) is not None]
        if len(set(values)) > 1:  # nothing to mark when every row is equal
            best[col.header] = max(values) if col.higher_is_better else min(values)
    body = []
    for row in table.rows:
        line = [f"`{row.method}`", describe_params(row), str(len(row.seeds))]
        for col in columns:
            text = col.text(row, table)
            value = col.value(row, table)
            if col.header in best and value is not None and value == best[col.header]:
                text = f"**{text}**"
            line.append(text)
        body.append(line)
    headers = ["method", "parameters", "seeds", *[c.header for c in columns]]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def render_leaderboard(tables: list[Table], plots: dict[str, list[str]]) -> str:
    """The whole LEADERBOARD.md text: contents, one section per table, the paper reference."""
    out = [
        "# mixbench leaderboard",
        "",
        "Generated by `mixbench leaderboard` from stored results; do not edit by hand. Each "
        "table states its protocol (data, network, schedule, seeds, hardware, software and "
        "commit, dates), all taken from the results behind it. Rows are named by the registry "
        "names of the methods.",
        "",
    ]
    if not tables:
        out += ["No finished cells yet.", ""]
    else:
        for table in tables:
            warning = " (short runs)" if short_run_warning(table) else ""
            seeds = len(seeds_of(table))
            out.append(
                f"- {table_title(table)}: {len(table.rows)} rows, {seeds} "
                f"seed{'s' if seeds != 1 else ''}, {table.schedule['epochs']} epochs{warning}"
            )
        out.append("")
    for table in tables:
        out += [
            f"## {table_title(table)}",
            "",
            describe_table(table),
            "",
            render_table(table),
            "",
            legend(table, [c.header for c in table_columns(table)]),
            "",
        ]
        for rel in plots.get(table.slug, []):
            kind = rel.rsplit("-", 1)[-1].removesuffix(".png")
            out += [f"![{table.slug} {kind}]({rel})", ""]
    out += [render_reference(tables), ""]
    return "\n".join(out).rstrip() + "\n"


def table_title(table: Table) -> str:
    """The heading of a table: preset, data set, network, schedule hash."""
    return (
        f"`{table.preset}` · {table.display_dataset} · {table.model} "
        f"· schedule {table.schedule_key}"
    )
