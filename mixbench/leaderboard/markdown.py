"""Markdown rendering of leaderboard tables (tabulate), best value of each column in bold."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from mixbench.config import to_dict
from mixbench.leaderboard.coverage import coverage_of, describe_coverage
from mixbench.leaderboard.legend import DASH, legend
from mixbench.leaderboard.protocol import (
    convergence_check,
    date_text,
    path_check_notice,
    plural,
    protocol_block,
    seeds_of,
    short_run_warning,
)
from mixbench.leaderboard.reference import render_reference
from mixbench.leaderboard.tables import UNNAMED_MACHINE, Row, Table


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


#: Rows with fewer seeds than this are never marked best (one seed's lead is noise), nor
#: compared with ERM's spread over seeds.
MIN_SEEDS_FOR_BEST = 2

#: The words of the ``vs ERM over seeds`` column by the value of :func:`seed_range_vs_erm`.
RANGE_WORDS = {1.0: "above", -1.0: "below", 0.0: "overlaps"}


def seed_range_vs(row: Row, ref: Row | None) -> float | None:
    """Whether the row's last-epoch top-1 lies beyond ``ref``'s spread over seeds: 1.0 where
    every seed's value of the row is above every seed's value of ``ref`` (the two ranges do
    not overlap), -1.0 where every one is below, 0.0 where the ranges overlap; None for
    ``ref`` itself and where either has fewer than two seeds (a range of one value says
    nothing)."""
    if ref is None or row is ref:
        return None
    mine, theirs = list(row.top1_by_seed.values()), list(ref.top1_by_seed.values())
    if len(mine) < MIN_SEEDS_FOR_BEST or len(theirs) < MIN_SEEDS_FOR_BEST:
        return None
    if min(mine) > max(theirs):
        return 1.0
    if max(mine) < min(theirs):
        return -1.0
    return 0.0


def seed_range_vs_erm(row: Row, table: Table) -> float | None:
    """:func:`seed_range_vs` against the table's ERM row."""
    return seed_range_vs(row, table.reference())


def range_word(value: float | None) -> str:
    """The word of a :func:`seed_range_vs` value: above, below, overlaps, or a dash."""
    return DASH if value is None else RANGE_WORDS[value]


def cost_basis(row: Row, table: Table) -> str | None:
    """What the row's ``cost ×ERM`` compares: ``"cpu"`` (the training process's CPU time,
    where the row's cells and ERM's trained on a CPU and recorded it: another process sharing
    the cores changes it far less than the wall time, which it can stretch by half), ``"wall"``
    (wall time) or None (no cost: no ERM, no timings, or not the same kind of machine as
    ERM's, whose speeds differ by more than the methods do)."""
    ref = table.reference()
    if ref is None or row.machines != ref.machines:
        return None
    on_cpu = row.devices == ["CPU"] and ref.devices == ["CPU"]
    if on_cpu and row.timing("train_cpu_seconds") is not None and ref.timing("train_cpu_seconds"):
        return "cpu"
    if row.timing("train_seconds") is not None and ref.timing("train_seconds"):
        return "wall"
    return None


def cost_vs_erm(row: Row, table: Table) -> float | None:
    """Training time relative to ERM's in the same table, each the median seconds over the
    seeds that measured it (:meth:`Row.timing`), by :func:`cost_basis`; None where it gives
    none."""
    basis = cost_basis(row, table)
    if basis is None:
        return None
    name = "train_cpu_seconds" if basis == "cpu" else "train_seconds"
    ref = table.reference()
    assert ref is not None  # a basis needs ERM's row
    return row.timing(name) / ref.timing(name)


def cost_basis_notes(table: Table) -> list[str]:
    """A line under a table whose ``cost ×ERM`` column compares CPU time for some rows and
    wall time for others: which rows are wall time, and why."""
    bases = [(r, cost_basis(r, table)) for r in table.rows]
    if not {"cpu", "wall"} <= {b for _, b in bases}:
        return []
    walls = sorted(method_label(r) for r, b in bases if b == "wall")
    return [
        f"cost ×ERM is a ratio of CPU times except for {', '.join(walls)}: wall time there, "
        "since these rows' cells or ERM's were trained before CPU time was recorded."
    ]


def timing_machine_notes(table: Table) -> list[str]:
    """A line under a table some of whose cells trained on another machine than the one its
    times are compared on (:func:`~mixbench.leaderboard.tables.pool_speeds`): how many cells
    the timing columns count, why the others are left out, and the rows timed on fewer
    cells than they have."""
    timed = {id(r): sum(m == table.timing_machine for m, _ in r.speeds) for r in table.rows}
    cells = sum(len(r.speeds) for r in table.rows)
    counted = sum(timed.values())
    if counted == cells:
        return []
    unnamed = (
        " (cells stored before mixbench named the machine that trained a cell count as one machine)"
        if table.timing_machine == UNNAMED_MACHINE
        else ""
    )
    fewer = [
        f"{method_label(r)} ({timed[id(r)]} of {len(r.speeds)})"
        for r in sorted(table.rows, key=method_label)
        if timed[id(r)] < len(r.speeds)
    ]
    ref = table.reference()
    named = ref is not None and any(m is not None for m, _ in ref.speeds)
    whose = "ERM's cells" if named else "its cells"  # as pool_speeds picks the machine
    return [
        f"train img/s and cost ×ERM compare the cells that trained on one machine, the one "
        f"that trained the most of {whose}{unnamed}: {counted} of the table's "
        f"{plural(cells, 'cell')}; {plural(cells - counted, 'cell')} trained elsewhere (on "
        "another machine, or on several: resumed on another), and machines of one kind differ "
        "in speed by more than most methods' costs, so their times are left out of these two "
        f"columns (a dash: none of the row's cells trained there). Rows timed on fewer cells "
        f"than they have: {', '.join(fewer)}."
    ]


def cost_spread_notes(table: Table) -> list[str]:
    """A line under a table whose ``cost ×ERM`` column compares CPU times: how far apart the
    CPU times of one row's cells lie (the widest row with two or more of them: one method,
    other seeds, the same kind of machine), the noise a cost ratio must exceed to tell two
    rows apart."""
    spreads = []
    for row in table.rows:
        if cost_basis(row, table) != "cpu":
            continue
        values = row.timing_values("train_cpu_seconds")
        if len(values) >= 2 and min(values) > 0:
            spreads.append((max(values) / min(values) - 1, method_label(row), values))
    if not spreads:
        return []
    spread, label, values = max(spreads, key=lambda s: (s[0], s[1]))
    return [
        f"cost ×ERM: the cells of one row (one method, other seeds, the same kind of machine) "
        f"took up to {100 * spread:.0f} % more CPU time than each other ({label}: "
        f"{min(values):,.0f} to {max(values):,.0f} s over {plural(len(values), 'cell')}); cost "
        "ratios closer than that do not tell two rows apart."
    ]


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


def _registered(method: str) -> Any:
    """The method's registered class, or None for a method this installation does not have
    (cells imported from elsewhere)."""
    from mixbench.methods import METHODS

    return METHODS.get(method) if method in METHODS else None


def parameter_tag(row: Row) -> str:
    """What sets the row apart from the method's current defaults: its named parameter set
    (``ce``, ``paper``), ``tuned``, or the parameters that differ; empty for the defaults.
    Parameters given one by one that differ from the defaults exactly as a named set of the
    current version does are that set, and named so."""
    if row.param_set.startswith("best:"):
        return "tuned"
    if row.param_set != "default":
        return row.param_set
    cls = _registered(row.method)
    if cls is None:
        return ""
    from mixbench.methods.base import resolve_params

    defaults = to_dict(resolve_params(cls, {}))

    def differences(params: dict[str, Any]) -> dict[str, Any]:
        # Compared as JSON values: a stored cell's tuple parameters come back as lists.
        return {k: v for k, v in to_dict(params).items() if defaults.get(k, v) != v}

    changed = differences(row.params)
    if changed and row.version == cls.version:
        for name, values in sorted(cls.param_sets.items()):
            if differences(resolve_params(cls, dict(values))) == changed:
                return name
    return format_params({k: row.params[k] for k in changed}) if changed else ""


def method_label(row: Row, code: bool = True) -> str:
    """How a row is named: ``multimix``, ``multimix [ce]``, ``multimix v1 [clean_weight=1.0]``.

    A bare name means the method's current version with its defaults; a version that is not
    the current one is shown (``v1``), and so is anything that differs from the defaults.
    ``code``: the method's name in Markdown backticks (plain text otherwise).
    """
    label = f"`{row.method}`" if code else row.method
    cls = _registered(row.method)
    if cls is not None and row.version != cls.version:
        label += f" v{row.version}"
    tags = [tag] if (tag := parameter_tag(row)) else []
    if row.epochs_scale != 1:
        tags.append(f"{row.epochs_scale}× epochs")
    return f"{label} [{', '.join(tags)}]" if tags else label


def mixes_devices(table: Table) -> bool:
    """Whether the table's cells trained on both CPUs and GPUs (whose rounding, AMP and
    speed differ): each row then says which it ran on."""
    return len({d for r in table.rows for d in r.devices}) > 1


def device_label(row: Row, table: Table, code: bool = True) -> str:
    """The row's name, with ``(GPU)``, ``(CPU)`` or ``(CPU + GPU)`` in a table that mixes
    devices (never silently pooled: a row of both says so); ``code`` as :func:`method_label`."""
    label = method_label(row, code)
    if mixes_devices(table):
        label += f" ({' + '.join(row.devices) or 'device unknown'})"
    return label


def equal_compute_notes(table: Table) -> list[str]:
    """One line per row trained for a multiple of the table's epochs: how long, and the
    measured passes per step it matches (the most of the table's other rows)."""
    rows = [r for r in table.rows if r.epochs_scale != 1]
    if not rows:
        return []
    epochs = int(table.schedule["epochs"])
    passes = [
        (r, p) for r in table.rows if r.epochs_scale == 1 and (p := r.timing("passes_per_step"))
    ]
    most = max((p for _, p in passes), default=None)
    notes = []
    for row in rows:
        text = (
            f"{method_label(row)}: trained for {row.epochs_scale}× the table's "
            f"{epochs:,} epochs ({row.epochs_scale * epochs:,}), as its own row"
        )
        if most is None:
            text += "; no row of the table has measured passes per step to compare with."
        else:
            top = sorted(method_label(r) for r, p in passes if p == most)
            relation = "as many" if abs(most - row.epochs_scale) < 0.05 else "not as many"
            text += (
                f": the equal-compute reference, {relation} network passes as the row"
                f"{'s' if len(top) > 1 else ''} with the most passes per step "
                f"({', '.join(top)}: {most:.2f}), so a method's gain over it is not "
                "bought with extra compute."
            )
        notes.append(text)
    return notes


def remeasured_notes(table: Table) -> list[str]:
    """One line per row some of whose cells carry timings measured again later (``mixbench
    verify --update-timings``, which stores them only where the rerun reproduced every metric
    bit for bit): which seeds, and when."""
    notes = []
    for row in table.rows:
        if not row.remeasured_by_seed:
            continue
        seeds = sorted(row.remeasured_by_seed)
        days = sorted({date_text(t) for t in row.remeasured_by_seed.values()})
        notes.append(
            f"{method_label(row)}: the timings of seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))} are those of a rerun from scratch on "
            f"{' and '.join(days)} (`mixbench verify --update-timings`), which reproduced every "
            "metric bit for bit."
        )
    return notes


def version_notes(table: Table) -> list[str]:
    """One line per method of the table whose rows include an older version than the current
    one: what changed since (each method's ``changes``)."""
    notes = []
    for method, version in sorted({(r.method, r.version) for r in table.rows}):
        cls = _registered(method)
        if cls is None or version == cls.version:
            continue
        since = "; ".join(f"v{v}: {text}" for v, text in sorted(cls.changes.items()) if v > version)
        notes.append(
            f"`{method}` v{version}: cells computed by version {version} of the method "
            f"(current: v{cls.version}){'. Since then, ' + since if since else ''}."
        )
    return notes


def format_value(value: Any) -> str:
    """A parameter value for display: floats with more than four significant digits (tuned
    values, say ``0.3751204``) rounded to four (``0.3751``); others as Python prints them."""
    if isinstance(value, float) and math.isfinite(value):
        short = f"{value:.4g}"
        return short if float(short) != value else repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(format_value(v) for v in value) + ")"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """``alpha=1.0, prob=0.5``; a dash for a method without parameters."""
    if not params:
        return DASH
    return ", ".join(f"{key}={format_value(value)}" for key, value in sorted(params.items()))


#: The columns of training itself, before the evaluators' columns.
TRAINING_COLUMNS: list[Column] = [
    Column("top-1 (%)", lambda r, t: r.mean("top1"), lambda r, t: _mean_std(r, "top1")),
    Column(
        "Δ ERM (pp)",
        _delta_erm,
        lambda r, t: DASH if _delta_erm(r, t) is None else f"{100 * _delta_erm(r, t):+.2f}",
    ),
    Column(
        "vs ERM over seeds",
        seed_range_vs_erm,
        lambda r, t: range_word(seed_range_vs_erm(r, t)),
        None,
        optional=True,
    ),
    Column("best-epoch top-1 (%)", *_metric_pct("best_top1")),
    Column(
        "NLL",
        lambda r, t: r.mean("nll"),
        lambda r, t: _number(r.mean("nll"), ".3f"),
        False,
    ),
]

#: The cost columns, after the evaluators' columns.
COST_COLUMNS: list[Column] = [
    Column(
        "train img/s",
        lambda r, t: r.timing("train_images_per_s"),
        lambda r, t: _number(r.timing("train_images_per_s"), ".0f"),
    ),
    Column(
        "cost ×ERM",
        cost_vs_erm,
        lambda r, t: DASH if cost_vs_erm(r, t) is None else f"{cost_vs_erm(r, t):.2f}",
        False,
    ),
    Column(
        "passes/step",
        lambda r, t: r.timing("passes_per_step"),
        lambda r, t: _number(r.timing("passes_per_step"), ".2f"),
        None,
        optional=True,
    ),
]


def spec_column(spec: Any) -> Column:
    """The leaderboard column of an evaluator's :class:`~mixbench.bench.evaluators.ColumnSpec`."""
    return Column(
        spec.header,
        lambda r, t: spec.row_value(r),
        lambda r, t: spec.format(spec.row_value(r), DASH),
        spec.higher_is_better,
        optional=spec.optional,
    )


def all_columns() -> list[Column]:
    """Every column a table can have: training's, then each registered evaluator's (by their
    declared position), then the cost columns."""
    from mixbench.bench.evaluators import evaluator_columns

    return [
        *TRAINING_COLUMNS,
        *(spec_column(spec) for _, spec in evaluator_columns()),
        *COST_COLUMNS,
    ]


def table_columns(table: Table) -> list[Column]:
    """The columns shown for ``table``: every column, less optional ones no row has."""
    return [
        col
        for col in all_columns()
        if not col.optional or any(col.value(r, table) is not None for r in table.rows)
    ]


def ranked_rows(table: Table) -> list[Row]:
    """The rows by mean top-1, best first (rows without a top-1 last, in table order)."""
    return sorted(table.rows, key=lambda r: (r.mean("top1") is None, -(r.mean("top1") or 0.0)))


def best_values(table: Table, columns: list[Column]) -> dict[str, float]:
    """The best value of each column among the rows with at least :data:`MIN_SEEDS_FOR_BEST`
    seeds (none when fewer than two such rows differ)."""
    eligible = [r for r in table.rows if len(r.seeds) >= MIN_SEEDS_FOR_BEST]
    best: dict[str, float] = {}
    for col in columns:
        if col.higher_is_better is None:
            continue
        values = [v for r in eligible if (v := col.value(r, table)) is not None]
        if len(set(values)) > 1:  # nothing to mark when every row is equal
            best[col.header] = max(values) if col.higher_is_better else min(values)
    return best


def render_table(table: Table) -> str:
    """The Markdown table of one group: rows ranked by top-1, the best value of each column in
    bold among the rows with several seeds."""
    columns = table_columns(table)
    best = best_values(table, columns)
    body = []
    for rank, row in enumerate(ranked_rows(table), 1):
        line = [
            str(rank),
            _cell(device_label(row, table)),
            _cell(describe_params(row)),
            str(len(row.seeds)),
        ]
        for col in columns:
            text = col.text(row, table)
            value = col.value(row, table)
            if (
                col.header in best
                and value is not None
                and value == best[col.header]
                and len(row.seeds) >= MIN_SEEDS_FOR_BEST
            ):
                text = f"**{text}**"
            line.append(text)
        body.append(line)
    headers = ["#", "method", "parameters", "seeds", *[c.header for c in columns]]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _cell(text: str) -> str:
    """``text`` safe in a table cell: a ``|`` (from a stored name or value) is escaped."""
    return text.replace("|", "\\|")


def render_leaderboard(tables: list[Table], plots: dict[str, list[str]]) -> str:
    """The whole LEADERBOARD.md text: contents, one section per table, the paper reference."""
    out = [
        "# mixbench leaderboard",
        "",
        "Generated by `mixbench leaderboard` from stored results; do not edit by hand. Each "
        "table states its protocol (data, network, schedule, seeds, hardware, software and "
        "commit, dates), all taken from the results behind it. Rows are named by the methods' "
        "registry names: a bare name is the method's current version with its defaults; "
        "`[ce]` names a parameter set (also where its parameters were given one by one), "
        "`[alpha=0.2]` the parameters that differ from the defaults, `[tuned]` parameters "
        "found by `mixbench tune`, and `v1` cells of an older version of the method (what "
        "changed since is said under the table).",
        "",
    ]
    checks = [convergence_check(table, tables) for table in tables]
    coverages = [coverage_of(table) for table in tables]
    if not tables:
        out += ["No finished cells yet.", ""]
    else:
        for table, check, coverage in zip(tables, checks, coverages):
            notes = []
            if path_check_notice(table):
                notes.append("checks the path only")
            elif check is not None and check.converged:
                notes.append("small runs, converged")
            elif short_run_warning(table):
                notes.append("short runs")
            if coverage is not None and not coverage.complete:
                notes.append(f"{coverage.done_cells} of {coverage.planned_cells} planned cells")
            seeds = len(seeds_of(table))
            out.append(
                f"- {table_title(table)}: {plural(len(table.rows), 'row')}, "
                f"{plural(seeds, 'seed')}, {plural(int(table.schedule['epochs']), 'epoch')}"
                + (f" ({'; '.join(notes)})" if notes else "")
            )
        out.append("")
    for table, check, coverage in zip(tables, checks, coverages):
        block = protocol_block(table, check)
        if coverage is not None:
            block += "\n" + describe_coverage(coverage, method_label)
        out += [
            f"## {table_title(table)}",
            "",
            block,
            "",
            render_table(table),
            "",
            legend(table, [c.header for c in table_columns(table)]),
            "",
        ]
        notes = (
            equal_compute_notes(table)
            + timing_machine_notes(table)
            + cost_basis_notes(table)
            + cost_spread_notes(table)
            + remeasured_notes(table)
            + version_notes(table)
        )
        if notes:
            out += [*(f"- {note}" for note in notes), ""]
        for rel in plots.get(table.slug, []):
            kind = rel.rsplit("-", 1)[-1].removesuffix(".png")
            out += [f"![{table.slug} {kind}]({rel})", ""]
    reference = render_reference(tables)
    if reference:
        out += [reference, ""]
    return "\n".join(out).rstrip() + "\n"


def table_title(table: Table) -> str:
    """The heading of a table: preset, data set, network, schedule hash."""
    return (
        f"`{table.preset}` · {table.display_dataset} · {table.model} "
        f"· schedule {table.schedule_key}"
    )
