"""``mixbench verify``: run finished cells again from scratch; do their results reproduce bit for
bit, and (``--update-timings``) re-measure what they cost."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mixbench.commands.options import add_db_argument, csv_list, seed_list, store_url
from mixbench.errors import UsageError

if TYPE_CHECKING:
    from mixbench.bench.run.store import CellRecord

#: Exit status when a cell did not reproduce (2 stays bad input).
EXIT_DIFFERENT = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Which finished cells, where their data is, and whether to store the new timings."""
    p.add_argument("--out", type=Path, default=Path("runs/smoke"), help="a run's folder")
    add_db_argument(p)
    p.add_argument("--preset", help="only cells of this preset")
    p.add_argument("--methods", type=csv_list, help="comma-separated method names or patterns")
    p.add_argument("--seeds", type=seed_list, help="comma-separated seeds")
    p.add_argument(
        "--keys", type=csv_list, help="comma-separated cell keys or their first characters"
    )
    p.add_argument("--data-root", help="data root, if it moved since the cells ran")
    p.add_argument("--device", help="auto, cpu or cuda (default: the cells' own setting)")
    p.add_argument(
        "--update-timings",
        action="store_true",
        help="store the new timings of each cell that reproduced on the same kind of machine "
        "(re-measure a cell whose first run shared the machine with another job)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def select(records: list[CellRecord], args: argparse.Namespace) -> list[CellRecord]:
    """The finished cells the filters pick; a ``UsageError`` when none is left."""
    picked = [
        r
        for r in records
        if (args.preset is None or r.preset == args.preset)
        and (not args.methods or any(fnmatch.fnmatchcase(r.method, m) for m in args.methods))
        and (not args.seeds or r.seed in args.seeds)
        and (not args.keys or any(r.key.startswith(k) for k in args.keys))
    ]
    if not picked:
        raise UsageError(
            f"no finished cell in the database matches the filters ({len(records)} finished "
            "in all); see `mixbench status` for the cells and their keys"
        )
    return picked


def _seconds(value: object, kind: str) -> str:
    if not isinstance(value, (int, float)):
        return f"no {kind} time"
    return (f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s") + f" {kind}"


def describe_timings(stored: dict | None, fresh: dict) -> str:
    """Training time now and as stored: CPU time (where measured) and wall time."""
    stored = stored or {}
    return (
        f"train {_seconds(fresh.get('train_cpu_seconds'), 'CPU')}, "
        f"{_seconds(fresh.get('train_seconds'), 'wall')} (stored: "
        f"{_seconds(stored.get('train_cpu_seconds'), 'CPU')}, "
        f"{_seconds(stored.get('train_seconds'), 'wall')})"
    )


def run(args: argparse.Namespace) -> int:
    """Re-run each selected cell; 0 when every one reproduced, 1 when one did not."""
    import time

    from mixbench.bench.run.store import DONE, ResultStore
    from mixbench.bench.run.verify import reproducible_cell, rerun_cell, same_machine
    from mixbench.bench.train.engine import CellFailed
    from mixbench.commands.status import row_label

    url = store_url(args)
    store = ResultStore(url)
    try:
        picked = select(store.records(status=DONE), args)
    finally:
        store.close()
    for record in picked:  # every cell checked before hours of training start
        reproducible_cell(record)
    different = 0
    for number, record in enumerate(picked, 1):
        print(
            f"[{number}/{len(picked)}] {row_label(record)} / {record.dataset} / {record.model} / "
            f"seed {record.seed} ({record.key})",
            file=sys.stderr,
        )
        try:
            rerun = rerun_cell(
                record, data_root=args.data_root, device=args.device, progress=not args.no_progress
            )
        except CellFailed as exc:  # e.g. its loss became NaN: it does not reproduce
            different += 1
            print(f"    DIFFERENT: the cell failed when trained again: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print(
                f"mixbench: interrupted; {number - 1} of {len(picked)} cells verified (above); "
                "a cell is verified from scratch, so the same command starts this one again",
                file=sys.stderr,
            )
            return 130
        if rerun.identical:
            print(
                f"    identical: {rerun.compared} metrics equal bit for bit; "
                f"{describe_timings(record.timings, rerun.timings)}",
                file=sys.stderr,
            )
        else:
            different += 1
            print(
                f"    DIFFERENT: {len(rerun.differences)} of {rerun.compared} metrics differ "
                f"({', '.join(rerun.differences)}); top-1 stored "
                f"{(record.metrics or {}).get('top1')}, now {rerun.metrics.get('top1')}",
                file=sys.stderr,
            )
        if not args.update_timings:
            continue
        stored_machine = (record.versions or {}).get("hardware")
        if not rerun.identical:
            print("    timings kept: the result did not reproduce", file=sys.stderr)
        elif not same_machine(stored_machine, rerun.hardware):
            print(
                f"    timings kept: measured on another machine ({rerun.hardware}) than the "
                f"cell's ({stored_machine})",
                file=sys.stderr,
            )
        else:
            store = ResultStore(url)
            try:
                store.replace_timings(record.key, dict(rerun.timings, remeasured_at=time.time()))
            finally:
                store.close()
            print("    timings updated", file=sys.stderr)
    same = len(picked) - different
    print(
        f"{len(picked)} cell{'s' if len(picked) != 1 else ''} run again: {same} identical, "
        f"{different} different",
        file=sys.stderr,
    )
    return EXIT_DIFFERENT if different else 0
