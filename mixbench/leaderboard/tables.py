"""From finished cells to leaderboard tables: grouping and statistics, no formatting.

A table holds the cells of one (preset, data set, model, schedule); a row holds the cells of one
method with one parameter set (cells with different parameters are never pooled), and its
statistics are over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mixbench.config import config_hash


@dataclass
class Row:
    """One method with one parameter set: its cells' metrics over seeds."""

    method: str
    params: dict[str, Any]
    param_set: str
    seeds: list[int]
    metrics: dict[str, list[float]]
    timings: dict[str, list[float]]

    def mean(self, name: str) -> float | None:
        values = [v for v in self.metrics.get(name, []) if v is not None and math.isfinite(v)]
        return statistics.fmean(values) if values else None

    def std(self, name: str) -> float | None:
        values = [v for v in self.metrics.get(name, []) if v is not None and math.isfinite(v)]
        return statistics.stdev(values) if len(values) > 1 else None

    def timing(self, name: str) -> float | None:
        values = [v for v in self.timings.get(name, []) if v is not None and math.isfinite(v)]
        return statistics.fmean(values) if values else None


@dataclass
class Table:
    """All rows that share a preset, data set, model and schedule."""

    preset: str
    dataset: str
    model: str
    model_options: dict[str, Any]
    dataset_options: dict[str, Any]
    schedule: dict[str, Any]
    eval: dict[str, Any]
    schedule_key: str
    rows: list[Row] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return f"{self.preset}-{self.dataset}-{self.model}-{self.schedule_key}"

    def reference(self) -> Row | None:
        """The ERM row with default parameters, if any (the baseline of the ERM column)."""
        for row in self.rows:
            if row.method == "erm":
                return row
        return None


def table_key(config: dict[str, Any]) -> str:
    """The hash of what the cells of one table must share (see ``CellConfig.schedule_key``)."""
    shared = {
        "schedule": config["schedule"],
        "dataset_options": config["dataset_options"],
        "model_options": config["model_options"],
        "eval": config["eval"],
    }
    return config_hash(shared)[:8]


def build_tables(records: Iterable[dict[str, Any]]) -> list[Table]:
    """Group finished cells (dicts with config, metrics, timings...) into sorted tables."""
    tables: dict[tuple[str, ...], Table] = {}
    rows: dict[tuple[str, ...], Row] = {}
    for rec in records:
        if rec.get("status", "done") != "done" or not rec.get("metrics"):
            continue
        config = rec["config"]
        skey = table_key(config)
        tkey = (rec["preset"], rec["dataset"], rec["model"], skey)
        table = tables.get(tkey)
        if table is None:
            table = tables[tkey] = Table(
                preset=rec["preset"],
                dataset=rec["dataset"],
                model=rec["model"],
                model_options=config["model_options"],
                dataset_options=config["dataset_options"],
                schedule=config["schedule"],
                eval=config["eval"],
                schedule_key=skey,
            )
        params_text = json.dumps(rec["params"], sort_keys=True)
        rkey = (*tkey, rec["method"], params_text)
        row = rows.get(rkey)
        if row is None:
            row = rows[rkey] = Row(
                method=rec["method"],
                params=rec["params"],
                param_set=config.get("param_set", "default"),
                seeds=[],
                metrics={},
                timings={},
            )
            table.rows.append(row)
        row.seeds.append(int(rec["seed"]))
        for name, value in rec["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row.metrics.setdefault(name, []).append(float(value))
        for name, value in (rec.get("timings") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row.timings.setdefault(name, []).append(float(value))
        if rec.get("host") and rec["host"] not in table.hosts:
            table.hosts.append(rec["host"])
        if rec.get("versions") and rec["versions"] not in table.versions:
            table.versions.append(rec["versions"])
        if rec.get("finished_at"):
            table.finished.append(float(rec["finished_at"]))
    out = sorted(tables.values(), key=lambda t: (t.preset, t.dataset, t.model, t.schedule_key))
    for table in out:
        table.rows.sort(key=lambda r: (r.method, json.dumps(r.params, sort_keys=True)))
        table.hosts.sort()
    return out
