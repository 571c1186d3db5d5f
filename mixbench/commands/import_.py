"""``mixbench import``: load exported cells into a results database, skipping known ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixbench.commands.options import add_db_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The exported files and the database to load them into."""
    p.add_argument("files", nargs="+", type=Path, help=".jsonl files or folders of them")
    p.add_argument("--out", type=Path, default=Path("runs/smoke"), help="the run's folder")
    add_db_argument(p)


def run(args: argparse.Namespace) -> int:
    """Import every record of the files; cells already present are skipped."""
    from mixbench.bench.run.matrix import check_out_dir, default_db_url
    from mixbench.bench.run.store import ResultStore
    from mixbench.bench.run.transfer import import_records, read_results_paths

    # Every file is checked before anything is written: a bad line anywhere commits nothing.
    records = read_results_paths(args.files, storable=True)
    if not args.db:
        check_out_dir(args.out)
    store = ResultStore(args.db or default_db_url(args.out))
    try:
        added, skipped = import_records(store, records)
    finally:
        store.close()
    print(f"imported {added} cells, skipped {skipped} already present", file=sys.stderr)
    return 0
