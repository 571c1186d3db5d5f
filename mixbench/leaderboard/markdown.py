"""Markdown rendering of leaderboard tables (tabulate), best value of each column in bold."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from mixbench.leaderboard.legend import DASH, legend
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


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def describe_table(table: Table) -> str:
    """The protocol line(s) under a table's heading: all from the stored results."""
    s = table.schedule
    opts = ", ".join(f"{k}={v}" for k, v in sorted(table.model_options.items()))
    model = f"{table.model} ({opts})" if opts else table.model
    seeds = sorted({seed for row in table.rows for seed in row.seeds})
    schedule = (
        f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}, batch {s['batch_size']}, "
        f"SGD lr {s['lr']} "
        f"(momentum {s['momentum']}{', Nesterov' if s['nesterov'] else ''}, "
        f"weight decay {s['weight_decay']}), {s['schedule']} schedule"
    )
    data_opts = ", ".join(f"{k}={v}" for k, v in sorted(table.dataset_options.items()))
    lines = [
        f"- data set: `{table.dataset}`" + (f" ({data_opts})" if data_opts else ""),
        f"- network: `{model}`",
        f"- schedule: {schedule}",
        f"- seeds: {len(seeds)} ({', '.join(str(x) for x in seeds)})",
    ]
    if table.versions:
        v = table.versions[0]
        lines.append(
            f"- software: mixbench {v.get('mixbench')}, torch {v.get('torch')}, "
            f"ignite {v.get('ignite')}"
        )
    if table.hosts:
        lines.append(f"- hosts: {', '.join(table.hosts)}")
    if table.finished:
        first, last = _date(min(table.finished)), _date(max(table.finished))
        lines.append(f"- finished: {first}" + (f" to {last}" if last != first else ""))
    return "\n".join(lines)


def render_leaderboard(tables: list[Table], plots: dict[str, list[str]]) -> str:
    """The whole LEADERBOARD.md text."""
    out = [
        "# mixbench leaderboard",
        "",
        "Generated by `mixbench leaderboard` from the results store; do not edit by hand. "
        "Rows are named by the registry names of the methods.",
        "",
    ]
    if not tables:
        out += ["No finished cells yet.", ""]
    for table in tables:
        out += [
            f"## `{table.preset}` · {table.dataset} · {table.model} "
            f"· schedule {table.schedule_key}",
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
    return "\n".join(out).rstrip() + "\n"
