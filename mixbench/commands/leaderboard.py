"""``mixbench leaderboard``: regenerate ``DIR/LEADERBOARD.md`` and its plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixbench.commands.options import add_db_argument, store_url


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--out DIR`` and where the cells come from (a database or exported files)."""
    p.add_argument("--out", type=Path, required=True, help="the run's output folder")
    add_db_argument(p)
    p.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        help="build from exported cells instead: a .jsonl file or a folder of them",
    )


def leaderboard_from_store(db_url: str, out_dir: Path) -> Path:
    """Write the leaderboard of every finished cell of the database at ``db_url``."""
    from mixbench.leaderboard import records_from_store, write_leaderboard

    return write_leaderboard(records_from_store(db_url), out_dir)


def run(args: argparse.Namespace) -> int:
    """Write the leaderboard and print its path."""
    from mixbench.leaderboard import write_leaderboard

    if args.from_path is not None:
        from mixbench.bench.run.transfer import read_results_path

        records = read_results_path(args.from_path)
        if not args.db:
            from mixbench.bench.run.matrix import check_out_dir

            check_out_dir(args.out)
        path = write_leaderboard(records, args.out)
    else:
        path = leaderboard_from_store(store_url(args), args.out)
    print(path)
    return 0
