"""Re-running finished cells: does a stored result come out again bit for bit, and what does the
cell cost when measured again.

A cell is trained and evaluated from scratch, from the resolved config stored with it, in a
scratch folder; its fresh metrics are compared with the stored ones as JSON text, so two
values agree only when every bit does (a NaN agrees with a NaN). On a CPU, with the same
software and torch's thread count, mixbench's runs are deterministic, so any difference means
the cell no longer reproduces: other code, other library versions, or a nondeterministic step.

The fresh timings can replace the stored ones (:meth:`ResultStore.replace_timings`) where the
metrics agree and the machine is the same: the way to re-measure a cell whose first run shared
the machine with another job. The stored record then says when its timings were measured
(``remeasured_at``, Unix time, among the timings).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.bench.run.cells import resolve_cell
from mixbench.bench.run.store import CellRecord
from mixbench.config import CellConfig, from_dict
from mixbench.errors import UsageError

#: The hardware entries that must agree for two timings to be compared (or one to replace the
#: other): the processor, the CPUs available, torch's threads, the GPU.
SAME_MACHINE_KEYS = ("cpu", "cpus", "torch_threads", "gpu", "gpus")

_MISSING = object()


@dataclass
class Rerun:
    """One cell run again: the metrics that differ from the stored ones (empty: identical bit
    for bit) and the fresh metrics and timings."""

    key: str
    differences: list[str]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    #: How many stored metrics were compared.
    compared: int = 0
    hardware: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.differences


def cell_from_record(record: CellRecord) -> CellConfig:
    """The cell a stored record was computed from, rebuilt from its resolved config.

    Raises ``UsageError`` where the config no longer builds a cell of this mixbench, or builds
    one whose key is not the record's (the key is the hash of the config).
    """
    try:
        cell = resolve_cell(from_dict(CellConfig, dict(record.config), f"cell {record.key}"))
    except UsageError as exc:
        raise UsageError(
            f"cell {record.key} cannot be rebuilt by this mixbench ({exc}); verify it with the "
            "version that computed it"
        ) from None
    if cell.key != record.key:
        raise UsageError(
            f"cell {record.key}'s stored config hashes to {cell.key}: the record was changed or "
            "made by another mixbench; verify it with the version that computed it"
        )
    return cell


def method_version_change(cell: CellConfig) -> str | None:
    """Why the cell cannot reproduce because its method changed since (its registered
    ``version`` is not the one stored with the cell), or None."""
    from mixbench.methods import get_method_class

    current = int(getattr(get_method_class(cell.method), "version", 1))
    if current == cell.method_version:
        return None
    return (
        f"method {cell.method!r} is at version {current} now and the cell was computed by "
        f"version {cell.method_version}: it computes something else, so the cell cannot "
        f"reproduce (run its preset again for version {current}'s cells)"
    )


def reproducible_cell(record: CellRecord) -> CellConfig:
    """The cell of ``record`` (:func:`cell_from_record`), refused with a ``UsageError`` where its
    method changed version since (:func:`method_version_change`): the checks a rerun needs
    before any training."""
    cell = cell_from_record(record)
    changed = method_version_change(cell)
    if changed is not None:
        raise UsageError(f"cell {record.key}: {changed}")
    return cell


def metric_differences(stored: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """The names of the metrics whose values differ between ``stored`` and ``fresh`` (either
    missing counts as different), compared as JSON text: equal only when every bit is."""

    def text(value: Any) -> str:
        return "<missing>" if value is _MISSING else json.dumps(value, sort_keys=True)

    names = sorted(set(stored) | set(fresh))
    return [n for n in names if text(stored.get(n, _MISSING)) != text(fresh.get(n, _MISSING))]


def same_machine(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two ``hardware`` records describe the same kind of machine and thread count
    (:data:`SAME_MACHINE_KEYS`): only then are two timings comparable."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in SAME_MACHINE_KEYS)


def rerun_cell(
    record: CellRecord,
    *,
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = False,
) -> Rerun:
    """Train and evaluate the stored cell ``record`` again from scratch and compare.

    ``data_root`` and ``device`` override the stored runtime settings (they are not part of
    the experiment). Torch's intra-op thread count is set to the one the cell recorded, since a
    CPU's results can depend on it. The run starts from epoch 0 in a temporary folder, removed
    afterwards.
    """
    import torch

    from mixbench.bench.run.matrix import evaluate_trained, release_cell_objects
    from mixbench.bench.run.provenance import hardware
    from mixbench.bench.train.engine import train_cell

    cell = reproducible_cell(record)
    if data_root is not None:
        cell.runtime.data_root = data_root
    if device is not None:
        cell.runtime.device = device
    cell.runtime.progress = progress
    threads = ((record.versions or {}).get("hardware") or {}).get("torch_threads")
    previous_threads = torch.get_num_threads()
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mixbench-verify-") as scratch:
            start = time.perf_counter()
            result = train_cell(cell, Path(scratch) / record.key)
            evaluate_trained(result, cell)
            timings = dict(result.timings, wall_seconds=time.perf_counter() - start)
            metrics = json.loads(json.dumps(result.metrics))
            release_cell_objects()
        machine = hardware()
    finally:
        torch.set_num_threads(previous_threads)
    stored = record.metrics or {}
    return Rerun(
        key=record.key,
        differences=metric_differences(stored, metrics),
        metrics=metrics,
        timings=timings,
        compared=len(stored),
        hardware=machine,
    )
