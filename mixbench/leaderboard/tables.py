"""From finished cells to leaderboard tables: grouping and statistics, no formatting.

A table holds the cells of one (preset, data set, model, schedule); a row holds the cells of one
method with one parameter set at one method version (cells with different parameters or of
different versions are never pooled), and its statistics are over seeds.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from mixbench.config import keyed_params, table_key
from mixbench.names import file_part, one_line

#: The machine of the cells stored before cells named the machines that trained them: taken
#: as one machine (a campaign ran on one before it could say so).
UNNAMED_MACHINE = ""

#: Metrics whose name ends so hold a note on an evaluator that was skipped (shown under the
#: table), e.g. ``corruption_official_note``.
NOTE_SUFFIX = "_note"


@dataclass
class Row:
    """One method with one parameter set: its cells' metrics over seeds."""

    method: str
    params: dict[str, Any]
    param_set: str
    seeds: list[int]
    metrics: dict[str, list[float]]
    timings: dict[str, list[float]]
    reliability: list[list[dict[str, Any]]] = field(default_factory=list)
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    #: The method's version the cells were computed by (cells of two versions never pool).
    version: int = 1
    #: The machines the cells ran on (CPU and GPU model names), sorted.
    machines: list[str] = field(default_factory=list)
    #: The kinds of device the cells trained on, ``"CPU"`` and/or ``"GPU"``, sorted.
    devices: list[str] = field(default_factory=list)
    #: How many times the table's epochs the cells trained (2: the equal-compute reference).
    epochs_scale: int = 1
    #: The last-epoch top-1 of each seed's cell.
    top1_by_seed: dict[int, float] = field(default_factory=dict)
    #: Each cell's speed timings (:func:`is_speed_timing`) with the one machine that measured
    #: them (:func:`timing_machine`); :func:`pool_speeds` puts those of the table's timing
    #: machine into :attr:`timings`.
    speeds: list[tuple[str | None, dict[str, float]]] = field(default_factory=list)
    #: When each seed's timings were measured again (``mixbench verify --update-timings``, Unix
    #: time), for the cells whose stored timings are not those of the run that made them.
    remeasured_by_seed: dict[int, float] = field(default_factory=dict)

    @classmethod
    def blank(cls, method: str, params: dict[str, Any], config: dict[str, Any]) -> Row:
        """The row a cell of ``method`` with ``params`` and resolved ``config`` belongs to,
        with no cells in it yet. Parameters at their key defaults (options added after cells
        were stored) are left out, as from the key: a cell that does not use such an option
        is the row it was before."""
        return cls(
            method=method,
            params=keyed_params(params, config.get("key_defaults")),
            param_set=config.get("param_set", "default"),
            seeds=[],
            metrics={},
            timings={},
            version=int(config.get("method_version") or 1),
            epochs_scale=int(config.get("epochs_scale") or 1),
        )

    def mean(self, name: str) -> float | None:
        values = [v for v in self.metrics.get(name, []) if v is not None and math.isfinite(v)]
        return statistics.fmean(values) if values else None

    def std(self, name: str) -> float | None:
        values = [v for v in self.metrics.get(name, []) if v is not None and math.isfinite(v)]
        return statistics.stdev(values) if len(values) > 1 else None

    def timing_values(self, name: str) -> list[float]:
        """The finite values of timing ``name``, one per cell that measured it."""
        return [v for v in self.timings.get(name, []) if v is not None and math.isfinite(v)]

    def timing(self, name: str) -> float | None:
        """The median of timing ``name`` over the seeds that measured it: a cell slowed by a
        job that shared the machine does not move a row of three seeds (of two: the mean)."""
        values = self.timing_values(name)
        return statistics.median(values) if values else None

    def reliability_bins(self) -> list[dict[str, Any]]:
        """The reliability bins of all seeds pooled: counts added, means weighted by counts.

        Sums are exact (``math.fsum``), so the result does not depend on the order of the seeds.
        """
        pooled: dict[tuple[float, float], tuple[list[int], list[float], list[float]]] = {}
        for bins in self.reliability:
            for b in bins:
                counts, conf, acc = pooled.setdefault((b["lower"], b["upper"]), ([], [], []))
                count = int(b.get("count") or 0)
                if count:
                    counts.append(count)
                    conf.append(count * float(b["confidence"]))
                    acc.append(count * float(b["accuracy"]))
        out = []
        for (lower, upper), (counts, conf, acc) in sorted(pooled.items()):
            n = sum(counts)
            out.append(
                {
                    "lower": lower,
                    "upper": upper,
                    "count": n,
                    "confidence": math.fsum(conf) / n if n else None,
                    "accuracy": math.fsum(acc) / n if n else None,
                }
            )
        return out

    def confidence_gap(self) -> float | None:
        """Mean confidence minus accuracy on the test set, all seeds pooled (None: no bins)."""
        return confidence_gap(self.reliability_bins())

    def curve(self) -> list[tuple[int, float]]:
        """``(epoch, mean test top-1 over the seeds evaluated at that epoch)``, by epoch."""
        per_epoch: dict[int, list[float]] = {}
        for history in self.history:
            for point in history:
                top1 = point.get("top1")
                if top1 is not None and math.isfinite(float(top1)):
                    per_epoch.setdefault(int(point["epoch"]), []).append(float(top1))
        return [(e, statistics.fmean(v)) for e, v in sorted(per_epoch.items())]


def confidence_gap(bins: Iterable[Mapping[str, Any]]) -> float | None:
    """Mean confidence minus accuracy over the examples counted in reliability ``bins``.

    Each bin holds its count and its mean confidence and accuracy, so the weighted means are the
    exact means over the examples. Positive: overconfident (as ERM usually is); negative:
    underconfident (as mixup methods often are). None when no bin holds an example.
    """
    n, conf, acc = 0, [], []
    for b in bins:
        count = int(b.get("count") or 0)
        if count:
            n += count
            conf.append(count * float(b["confidence"]))
            acc.append(count * float(b["accuracy"]))
    return (math.fsum(conf) - math.fsum(acc)) / n if n else None


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
    eval_settings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_name: str = ""
    data: list[dict[str, Any]] = field(default_factory=list)
    #: The machine whose cells' speed timings the rows show (:func:`pool_speeds`).
    timing_machine: str | None = None

    @property
    def slug(self) -> str:
        """A file-name-safe name of the table (its plots are named after it): one file-name
        component whatever the names hold (no ``/``, never starting with a dot)."""
        data = re.sub(r"[^A-Za-z0-9]+", "", self.data_name.lower())
        dataset = f"{self.dataset}-{data}" if data and data != self.dataset else self.dataset
        return file_part(f"{self.preset}-{dataset}-{self.model}-{self.schedule_key}")

    @property
    def display_dataset(self) -> str:
        """The data set as users know it (``CIFAR-10``), else its registry name."""
        return self.data_name or self.dataset

    def reference(self) -> Row | None:
        """The ERM row trained for the table's epochs, if any (the baseline of the ERM
        column; an equal-compute ERM row, trained longer, is not)."""
        for row in self.rows:
            if row.method == "erm" and row.epochs_scale == 1:
                return row
        return None


def is_speed_timing(name: str) -> bool:
    """Whether timing ``name`` measures speed (seconds, images per second), which depends on
    the machine, rather than counting work (images, passes per step, epochs)."""
    return name.endswith(("_seconds", "_per_s"))


def timing_machine(timings: Mapping[str, Any]) -> str | None:
    """The one machine whose speed a cell's timings measure: the one that trained it (its
    ``train_machines``), :data:`UNNAMED_MACHINE` for a cell stored before machines were
    named, None where its machines are unknown or several (a resume moved it): its speed
    compares with no other cell's."""
    if "train_machines" not in timings:
        return UNNAMED_MACHINE
    machines = timings["train_machines"]
    if isinstance(machines, list) and len(machines) == 1 and isinstance(machines[0], str):
        return machines[0]
    return None


def pool_speeds(table: Table) -> None:
    """Pick the table's timing machine and give each row the speed timings of its cells that
    trained there. Machines of one kind differ in speed by up to 3x, more than most methods'
    costs, so times are only compared within one machine: the one that trained the most of
    ERM's cells (where there are none, the most of all cells; ties: the most cells of the
    table, then the name)."""
    every = Counter(m for r in table.rows for m, _ in r.speeds if m is not None)
    ref = table.reference()
    erm = Counter(m for m, _ in ref.speeds if m is not None) if ref is not None else Counter()
    counts = erm or every
    if counts:
        table.timing_machine = max(counts, key=lambda m: (counts[m], every[m], m))
    for row in table.rows:
        for machine, values in row.speeds:
            if machine is not None and machine == table.timing_machine:
                for name, value in values.items():
                    row.timings.setdefault(name, []).append(value)


def machine_name(record: dict[str, Any]) -> str | None:
    """The processor (and GPU) a cell ran on, from its stored hardware; None if not stored."""
    hardware = (record.get("versions") or {}).get("hardware")
    if not isinstance(hardware, dict):
        return None
    gpu = hardware.get("gpu")
    return f"{hardware.get('cpu')}" + (f" + {gpu}" if gpu else "")


def device_kind(record: dict[str, Any]) -> str | None:
    """``"GPU"`` or ``"CPU"``: what a cell trained on, from its stored hardware (a GPU
    recorded means the GPU); None if no hardware was stored."""
    hardware = (record.get("versions") or {}).get("hardware")
    if not isinstance(hardware, dict):
        return None
    return "GPU" if hardware.get("gpu") else "CPU"


def data_name(record: dict[str, Any]) -> str:
    """How a cell names its data: stored by the engine (``metrics["data"]["name"]``); for
    older image-folder cells, the folder's name; else empty (the registry name is shown)."""
    data = (record.get("metrics") or {}).get("data")
    if isinstance(data, dict) and data.get("name"):
        return str(data["name"])
    config = record.get("config") or {}
    root = (config.get("runtime") or {}).get("data_root")
    if config.get("dataset") == "imagefolder" and root:
        return PurePath(str(root)).name
    return ""


def _one_line_text(value: Any) -> Any:
    """``value`` with every string in it made one line (:func:`one_line`): names and notes of
    a stored cell cannot start a heading or a list item of the leaderboard."""
    if isinstance(value, str):
        return one_line(value)
    if isinstance(value, dict):
        return {k: _one_line_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_one_line_text(v) for v in value]
    return value


def build_tables(records: Iterable[dict[str, Any]]) -> list[Table]:
    """Group finished cells (dicts with config, metrics, timings...) into sorted tables."""
    tables: dict[tuple[str, ...], Table] = {}
    rows: dict[tuple[str, ...], Row] = {}
    seen: set[str] = set()
    for rec in records:
        if rec.get("status", "done") != "done" or not rec.get("metrics"):
            continue
        rec = _one_line_text(rec)
        if rec.get("key"):  # the same cell from two exports counts once
            if rec["key"] in seen:
                continue
            seen.add(rec["key"])
        config = rec["config"]
        skey = table_key(config)
        name = data_name(rec)
        tkey = (rec["preset"], rec["dataset"], name, rec["model"], skey)
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
                data_name=name,
            )
        blank = Row.blank(rec["method"], rec["params"], config)
        params_text = json.dumps(blank.params, sort_keys=True)
        rkey = (*tkey, rec["method"], params_text, blank.version, blank.epochs_scale)
        row = rows.get(rkey)
        if row is None:
            row = rows[rkey] = blank
            table.rows.append(row)
        row.seeds.append(int(rec["seed"]))
        top1 = rec["metrics"].get("top1")
        if isinstance(top1, (int, float)) and not isinstance(top1, bool):
            row.top1_by_seed[int(rec["seed"])] = float(top1)
        device = device_kind(rec)
        if device is not None and device not in row.devices:
            row.devices.append(device)
            row.devices.sort()
        machine = machine_name(rec)
        if machine is not None and machine not in row.machines:
            row.machines.append(machine)
            row.machines.sort()
        for name, value in rec["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row.metrics.setdefault(name, []).append(float(value))
        timings = rec.get("timings") or {}
        speeds = {}
        for name, value in timings.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if is_speed_timing(name):
                    speeds[name] = float(value)
                else:
                    row.timings.setdefault(name, []).append(float(value))
        row.speeds.append((timing_machine(timings), speeds))
        remeasured = (rec.get("timings") or {}).get("remeasured_at")
        if isinstance(remeasured, (int, float)) and not isinstance(remeasured, bool):
            row.remeasured_by_seed[int(rec["seed"])] = float(remeasured)
        metrics = rec["metrics"]
        if isinstance(metrics.get("reliability"), list):
            row.reliability.append(metrics["reliability"])
        if isinstance(metrics.get("history"), list):
            row.history.append(metrics["history"])
        data = metrics.get("data")
        if isinstance(data, dict) and data not in table.data:
            table.data.append(data)
        settings = metrics.get("eval_settings")
        if isinstance(settings, dict) and settings not in table.eval_settings:
            table.eval_settings.append(settings)
        for key, note in metrics.items():
            if key.endswith(NOTE_SUFFIX) and isinstance(note, str) and note not in table.notes:
                table.notes.append(note)
        if rec.get("host") and rec["host"] not in table.hosts:
            table.hosts.append(rec["host"])
        if rec.get("versions") and rec["versions"] not in table.versions:
            table.versions.append(rec["versions"])
        if rec.get("finished_at"):
            table.finished.append(float(rec["finished_at"]))
    out = sorted(
        tables.values(),
        key=lambda t: (t.preset, t.dataset, t.data_name, t.model, t.schedule_key),
    )
    for table in out:
        table.rows.sort(
            key=lambda r: (
                r.method,
                json.dumps(r.params, sort_keys=True),
                r.version,
                r.epochs_scale,
            )  # fmt: skip
        )
        table.hosts.sort()
        table.notes.sort()
        table.eval_settings.sort(key=lambda s: json.dumps(s, sort_keys=True))
        table.data.sort(key=lambda d: json.dumps(d, sort_keys=True))
        pool_speeds(table)
    return out
