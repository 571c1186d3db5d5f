"""``mixbench worker``: claim and run cells of a shared results database until none is left."""

from __future__ import annotations

import argparse
import sys

from mixbench.commands.matrices import cells_and_notes
from mixbench.commands.options import add_matrix_arguments, out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The matrix options and the worker's own."""
    add_matrix_arguments(p)
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per cell")
    p.add_argument("--worker-name", help="name recorded with claimed cells")


def run(args: argparse.Namespace) -> int:
    """Run the matrix's cells that no other worker has claimed."""
    from mixbench.bench.run.matrix import run_matrix

    cells, notes = cells_and_notes(args)
    summary = run_matrix(
        cells,
        out_dir(args),
        args.db,
        notes=notes,
        retry_failed=args.retry_failed,
        worker=args.worker_name,
        nproc_per_node=args.nproc_per_node,
    )
    print(
        f"worker done: {summary.ran} cells run, {len(summary.failed)} failed in the matrix",
        file=sys.stderr,
    )
    return 0
