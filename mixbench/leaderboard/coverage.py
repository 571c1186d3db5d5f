"""How much of its preset's plan a table holds.

A table of a preset shipped with mixbench (``long``, ``short``, ...) is compared with the
cells that preset plans for the table's data set and network: which rows (method, parameters,
version, epochs) have cells for which of the preset's seeds, which rows have none yet, and
which methods the preset lists but the network cannot run (TransMix on a CNN). A campaign
published while it runs then says so in its protocol block instead of looking complete.

The plan is the preset as shipped, without command-line overrides: a table counts as the
preset's when its schedule and network options are the preset's and its data-set options
include the preset's (a run may add some, such as the data set's name).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mixbench.leaderboard.tables import Row, Table

__all__ = ["Coverage", "coverage_of", "describe_coverage", "row_identity"]


@dataclass
class Coverage:
    """The cells a shipped preset plans for one table, and how many of them the table has."""

    preset: str
    #: Rows the preset plans, each with the seeds it plans for the row and those the table
    #: has of them (possibly none).
    planned: list[tuple[Row, list[int], list[int]]] = field(default_factory=list)
    #: Methods the preset lists that the table's network cannot run, each with the reason.
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def planned_cells(self) -> int:
        """How many cells the preset plans for the table."""
        return sum(len(seeds) for _, seeds, _ in self.planned)

    @property
    def done_cells(self) -> int:
        """How many of the planned cells the table holds."""
        return sum(len(done) for _, _, done in self.planned)

    @property
    def complete(self) -> bool:
        """Whether every planned cell is in the table."""
        return self.done_cells == self.planned_cells


def row_identity(row: Row) -> tuple[str, str, int, int]:
    """What makes two cells one row: method, parameters (as JSON), version, epochs scale."""
    params = json.dumps(row.params, sort_keys=True, default=str)
    return row.method, params, row.version, row.epochs_scale


def _same_protocol(config: dict[str, Any], table: Table) -> bool:
    """Whether a planned cell's ``config`` trains as the table's cells did."""
    options = config["dataset_options"]
    return (
        config["dataset"] == table.dataset
        and config["model"] == table.model
        and config["schedule"] == table.schedule
        and config["model_options"] == table.model_options
        and all(table.dataset_options.get(k) == v for k, v in options.items())
    )


def coverage_of(table: Table) -> Coverage | None:
    """The plan of the shipped preset the table's cells were run from, as :class:`Coverage`;
    None when the preset is not shipped with this mixbench, cannot be expanded without a
    results database (``param_set = "best"``), or plans no cell like the table's."""
    from mixbench.bench.run.cells import build_cells, split_unsupported
    from mixbench.config import list_presets, load_matrices, to_dict
    from mixbench.errors import UsageError

    if table.preset not in list_presets():
        return None
    try:
        matrices = [m for m in load_matrices(table.preset) if m.name == table.preset]
        cells = [cell for matrix in matrices for cell in build_cells(matrix)]
    except UsageError:
        return None
    configs = [(cell, to_dict(cell)) for cell in cells]
    mine = [(cell, config) for cell, config in configs if _same_protocol(config, table)]
    if not mine:
        return None
    kept, refused = split_unsupported([cell for cell, _ in mine])
    kept_keys = {cell.key for cell in kept}
    by_identity = {row_identity(row): row for row in table.rows}
    coverage = Coverage(preset=table.preset)
    planned: dict[tuple[str, str, int, int], tuple[Row, list[int], list[int]]] = {}
    for cell, config in mine:
        if cell.key not in kept_keys:
            continue
        blank = Row.blank(cell.method, config["params"], config)
        identity = row_identity(blank)
        row = by_identity.get(identity, blank)
        entry = planned.setdefault(identity, (row, [], []))
        if cell.seed not in entry[1]:
            entry[1].append(cell.seed)
            if cell.seed in row.seeds:
                entry[2].append(cell.seed)
    coverage.planned = [(row, sorted(seeds), sorted(done)) for row, seeds, done in planned.values()]
    for cell, reason in refused:
        if (cell.method, reason) not in coverage.left_out:
            coverage.left_out.append((cell.method, reason))
    return coverage


def describe_coverage(coverage: Coverage, label: Callable[[Row], str]) -> str:
    """The protocol-block line of ``coverage``; ``label(row)`` names a row as the table does."""
    rows = len(coverage.planned)
    counts = sorted({len(seeds) for _, seeds, _ in coverage.planned})
    if len(counts) == 1:
        shape = f"{rows} rows × {counts[0]} seed{'s' if counts[0] != 1 else ''}"
    else:
        shape = f"{rows} rows of {counts[0]} to {counts[-1]} seeds"
    text = (
        f"- cells: {coverage.done_cells} of the {coverage.planned_cells} that preset "
        f"`{coverage.preset}` plans ({shape})"
    )
    if coverage.complete:
        text += ": complete"
    else:
        empty = [label(row) for row, _, done in coverage.planned if not done]
        short = [
            f"{label(row)} ({len(done)} of {len(seeds)})"
            for row, seeds, done in coverage.planned
            if done and len(done) < len(seeds)
        ]
        parts = []
        if empty:
            parts.append(f"rows with no cell yet: {', '.join(empty)}")
        if short:
            parts.append(f"rows short of seeds: {', '.join(short)}")
        text += "; incomplete: " + "; ".join(parts)
    for method, reason in coverage.left_out:
        text += f"; left out: `{method}` ({reason.rstrip('.')})"
    return text
