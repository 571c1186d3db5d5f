"""A parameter sweep as a Markdown page: one row per setting, one column per swept parameter.

Used for the MultiMix / Dense MultiMix sweep (preset ``sweep-multimix``): ``mixbench
sweep-table --from results/ --preset sweep-multimix --out docs/multimix-sweep.md``. The page
comes from stored results only, so regenerating it gives the same bytes.

A parameter is *swept* when it takes more than one value among the rows of one method. The
*base* setting of a method is its defaults where some row has them (the paper's setting), else
the most common value of each swept parameter (in a one-factor-at-a-time design, the setting
every variant departs from); rows are ordered base first, then by the parameter they change,
and where a row and its base both have several seeds, a column says whether the row's top-1
lies above or below the base's range over seeds. Methods with a single setting that lacks
some swept parameter (ERM, mixup) are the reference rows, listed first with their own
parameters beside their names.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tabulate import tabulate

from mixbench.config import to_dict
from mixbench.leaderboard.legend import DASH
from mixbench.leaderboard.markdown import format_params, range_word, seed_range_vs, version_notes
from mixbench.leaderboard.protocol import describe_table
from mixbench.leaderboard.tables import Row, Table

#: The header of the column that compares a setting with its method's base over seeds.
VS_BASE = "vs base over seeds"


def param_text(value: Any) -> str:
    """A parameter value as text, for comparing values of any type."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _declared_order(method: str) -> list[str]:
    """The method's parameters in their declared order (empty for an unknown method)."""
    from mixbench.methods import get_method_class, list_methods

    return list(get_method_class(method).params) if method in list_methods() else []


def swept_parameters(table: Table) -> list[str]:
    """Parameters that take more than one value among the rows of some method."""
    swept: list[str] = []
    for method in sorted({r.method for r in table.rows}):
        rows = [r for r in table.rows if r.method == method]
        names = _declared_order(method) + sorted({k for r in rows for k in r.params})
        for name in names:
            values = {param_text(r.params.get(name)) for r in rows}
            if len(values) > 1 and name not in swept:
                swept.append(name)
    return swept


def in_sweep(rows: list[Row], swept: list[str]) -> bool:
    """Whether a method's rows belong to the sweep: several settings, or (a sweep still under
    way) one setting that has every swept parameter. Others (ERM, mixup) are references."""
    return len(rows) > 1 or bool(swept) and all(name in rows[0].params for name in swept)


def _defaults(method: str) -> dict[str, str]:
    """The method's current default of each parameter, as :func:`param_text` (empty for an
    unknown method)."""
    from mixbench.methods import get_method_class, list_methods

    if method not in list_methods():
        return {}
    params = get_method_class(method).params
    return {name: param_text(to_dict(p.default)) for name, p in params.items()}


def base_setting(rows: list[Row], swept: list[str]) -> dict[str, str]:
    """The setting the other rows of a method are read against: the method's defaults where
    some row has them in every swept parameter (the paper's setting, whatever the design),
    else the most common value of each swept parameter (ties: the smaller text)."""
    if rows:
        defaults = _defaults(rows[0].method)
        wanted = {name: defaults[name] for name in swept if name in defaults}
        if wanted and any(
            all(param_text(r.params.get(name)) == value for name, value in wanted.items())
            for r in rows
        ):
            return wanted
    base = {}
    for name in swept:
        counts = Counter(param_text(r.params[name]) for r in rows if name in r.params)
        if counts:
            base[name] = min(counts, key=lambda v: (-counts[v], v))
    return base


def _order(row: Row, base: dict[str, str], swept: list[str]) -> tuple[Any, ...]:
    changed = [
        i for i, name in enumerate(swept) if param_text(row.params.get(name)) != base.get(name)
    ]
    values = [row.params.get(name) for name in swept]
    numeric = [(0, v, "") if isinstance(v, (int, float)) else (1, 0, param_text(v)) for v in values]
    return (len(changed) > 1, changed, numeric)


def _top1(row: Row) -> str:
    mean, std = row.mean("top1"), row.std("top1")
    if mean is None:
        return DASH
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * mean:.1f}"


def _delta(row: Row, table: Table) -> str:
    ref = table.reference()
    if ref is None or row.mean("top1") is None or ref.mean("top1") is None:
        return DASH
    return f"{100 * (row.mean('top1') - ref.mean('top1')):+.1f}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def render_sweep_table(table: Table) -> str:
    """The Markdown table: references first, then each swept method's base and variants; a
    ``vs base over seeds`` column where some variant and its base both have several seeds."""
    swept = swept_parameters(table)
    by_method: dict[str, list[Row]] = {}
    for row in table.rows:
        by_method.setdefault(row.method, []).append(row)
    references = [m for m in by_method if not in_sweep(by_method[m], swept)]
    body: list[list[str]] = []
    ranges: list[float | None] = []
    for method in sorted(references, key=lambda m: (m != "erm", m)):
        (row,) = by_method[method]
        own = format_params(row.params)
        name = _versioned(row) + (f" ({own})" if row.params else "")
        body.append([name, *[DASH] * len(swept), *_stats(row, table)])
        ranges.append(None)
    for method in sorted(m for m in by_method if m not in references):
        rows = by_method[method]
        base = base_setting(rows, swept)
        # each version of the method is read against its own base row
        base_rows = {r.version: r for r in rows if _is_base(r, base, swept)}
        for row in sorted(rows, key=lambda r: _order(r, base, swept)):
            cells = []
            for name in swept:
                if name not in row.params:
                    cells.append(DASH)
                    continue
                text = param_text(row.params[name])
                cells.append(text if text == base.get(name) else f"**{text}**")
            label = _versioned(row) + (" (base)" if _is_base(row, base, swept) else "")
            body.append([label, *cells, *_stats(row, table)])
            ranges.append(seed_range_vs(row, base_rows.get(row.version)))
    headers = ["method", *swept, "seeds", "top-1 (%)", "Δ ERM (pp)", "best-epoch top-1 (%)",
               "ECE (%)"]  # fmt: skip
    if any(value is not None for value in ranges):
        headers.insert(len(swept) + 3, VS_BASE)
        for line, value in zip(body, ranges):
            line.insert(len(swept) + 3, range_word(value))
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _is_base(row: Row, base: dict[str, str], swept: list[str]) -> bool:
    """Whether ``row`` has the ``base`` value of every swept parameter."""
    return all(param_text(row.params.get(n)) == base.get(n) for n in swept if n in base)


def _current(row: Row) -> int:
    """The current version of the row's method (the row's own for an unknown method)."""
    from mixbench.methods import METHODS

    return METHODS.get(row.method).version if row.method in METHODS else row.version


def _versioned(row: Row) -> str:
    """```multimix```, or ```multimix` v1`` for cells of an older version of the method."""
    return f"`{row.method}`" + (f" v{row.version}" if row.version != _current(row) else "")


def _stats(row: Row, table: Table) -> list[str]:
    return [
        str(len(row.seeds)),
        _top1(row),
        _delta(row, table),
        _pct(row.mean("best_top1")),
        _pct(row.mean("ece")),
    ]


def _parameter_notes(table: Table, swept: list[str]) -> list[str]:
    """What each swept parameter means (from the method's declaration), and the fixed ones."""
    from mixbench.methods import get_method_class, list_methods

    notes = []
    methods = sorted({r.method for r in table.rows if r.method in list_methods()})
    for name in swept:
        for method in methods:
            param = get_method_class(method).params.get(name)
            if param is not None:
                notes.append(f"- `{name}`: {param.help}.")
                break
    fixed: dict[str, set[str]] = {}
    for row in table.rows:
        if not in_sweep([r for r in table.rows if r.method == row.method], swept):
            continue
        for key, value in row.params.items():
            if key not in swept:
                fixed.setdefault(key, set()).add(param_text(value))
    if fixed:
        text = ", ".join(f"{k}={'/'.join(sorted(v))}" for k, v in sorted(fixed.items()))
        notes.append(f"- Not swept, the same in every row: {text}.")
    return notes


def render_sweep_page(tables: list[Table], preset: str) -> str:
    """The whole Markdown page for the tables of one preset."""
    out = [
        f"# Sweep: `{preset}`",
        "",
        "Generated by `mixbench sweep-table` from stored results; do not edit by hand. One row per "
        "parameter setting; a parameter value in bold differs from the method's base setting "
        "(its defaults where a row has them, else the most common value of each swept "
        "parameter). Top-1 is the last epoch's, in percent, mean ± standard deviation over "
        "seeds (no ± with one seed); vs base over seeds (where shown) is above where every "
        "seed's top-1 of the row is higher than every seed's of the base row of the same "
        "version, below where every one is lower, overlaps otherwise (a check of ranges, not a "
        "significance test; a dash where either row has fewer than two seeds); Δ ERM is the "
        "difference to the `erm` row of the same table; the best epoch is selected on the test "
        "set and shown for reference only.",
        "",
    ]
    for table in tables:
        swept = swept_parameters(table)
        out += [
            f"## {table.display_dataset} · {table.model} · schedule {table.schedule_key}",
            "",
            describe_table(table),
            "",
            render_sweep_table(table),
            "",
            *_parameter_notes(table, swept),
            *(f"- {note}" for note in version_notes(table)),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"
