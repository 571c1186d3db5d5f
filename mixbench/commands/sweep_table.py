"""``mixbench sweep-table``: one preset's cells as a parameter-sweep page (Markdown)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixbench.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's preset, the page to write and where the cells come from."""
    p.add_argument("--preset", required=True, help="the sweep's preset, e.g. sweep-multimix")
    p.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    p.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        help="exported cells: a .jsonl file or a folder of them",
    )
    p.add_argument("--db", help="or a results database URL")


def run(args: argparse.Namespace) -> int:
    """Write the sweep page and print its path."""
    from mixbench.fileio import atomic_write_text
    from mixbench.leaderboard import build_tables
    from mixbench.leaderboard.sweep import render_sweep_page

    if args.from_path is not None:
        from mixbench.bench.run.transfer import read_results_path

        records = read_results_path(args.from_path)
    elif args.db:
        from mixbench.leaderboard import records_from_store

        records = records_from_store(args.db)
    else:
        raise UsageError("sweep-table needs --from PATH (exported .jsonl) or --db URL")
    tables = [t for t in build_tables(records) if t.preset == args.preset]
    if not tables:
        presets = sorted({str(r.get("preset")) for r in records})
        raise UsageError(
            f"no finished cells of preset {args.preset!r} in the results; "
            f"presets found: {', '.join(presets) or 'none'}"
        )
    atomic_write_text(args.out, render_sweep_page(tables, args.preset))
    print(args.out)
    return 0
