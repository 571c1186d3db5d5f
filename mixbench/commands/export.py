"""``mixbench export``: the finished cells of a results database as JSON Lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixbench.commands.options import add_db_argument, store_url


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The file to write, the run folder (or ``--db``) and an optional preset filter."""
    p.add_argument("--out", dest="file", type=Path, required=True, help="FILE.jsonl to write")
    p.add_argument(
        "--from",
        dest="out",
        type=Path,
        default=Path("runs/smoke"),
        help="the run's folder (its results.db)",
    )
    add_db_argument(p)
    p.add_argument(
        "--preset",
        help="only the cells of this preset (of the presets it includes, for one such as "
        "long-pilot)",
    )


def stored_preset_names(name: str) -> set[str]:
    """The preset names that cells of preset ``name`` are stored under: its own, or, for a
    shipped preset or preset file that includes others, theirs. A name that is neither (the
    preset of cells made elsewhere) is itself."""
    from mixbench.config import list_presets, load_matrices

    if name in list_presets() or (name.endswith(".toml") and Path(name).is_file()):
        return {matrix.name for matrix in load_matrices(name)}
    return {name}


def run(args: argparse.Namespace) -> int:
    """Write one JSON object per finished cell."""
    from mixbench.bench.run.store import ResultStore
    from mixbench.bench.run.transfer import export_records, write_jsonl

    store = ResultStore(store_url(args))
    try:
        presets = None if args.preset is None else stored_preset_names(args.preset)
        records = export_records(store, presets=presets)
    finally:
        store.close()
    count = write_jsonl(records, args.file)
    print(f"exported {count} finished cells to {args.file}", file=sys.stderr)
    return 0
