"""``mixbench run``: run every cell of a matrix not done yet, then write the leaderboard.

With ``--launcher local|slurm --workers K`` the cells run on K workers launched through
submitit (each claims cells of the shared results database until none is left); with
``--dry-run`` the cells are listed and nothing runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mixbench.commands.matrices import cells_and_notes
from mixbench.commands.options import add_matrix_arguments, out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The matrix options, the run's own options and the launcher's."""
    add_matrix_arguments(p)
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--worker-name", help="name recorded with claimed cells")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="processes per cell (DistributedDataParallel through ignite.distributed)",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="run the matrix on workers launched through submitit",
    )
    p.add_argument("--workers", type=int, default=2, help="number of launched workers")
    p.add_argument("--slurm-partition", help="SLURM partition of the workers")
    p.add_argument("--slurm-time", type=int, default=24 * 60, help="minutes per worker job")
    p.add_argument("--slurm-gpus-per-task", type=int, default=1, help="GPUs per worker")
    p.add_argument("--slurm-cpus-per-task", type=int, default=8, help="CPUs per worker")
    p.add_argument("--no-leaderboard", action="store_true", help="skip the leaderboard")
    p.add_argument(
        "--dry-run", action="store_true", help="list the cells without training (no data needed)"
    )


def run(args: argparse.Namespace) -> int:
    """Run every cell not done yet, then write the leaderboard."""
    cells, notes = cells_and_notes(args)
    if args.dry_run:
        code = print_dry_run(cells)
        print_lines(notes)
        return code
    from mixbench.bench.run.matrix import default_db_url, run_matrix
    from mixbench.bench.run.store import redact_url
    from mixbench.commands.leaderboard import leaderboard_from_store

    folder = out_dir(args)
    if args.launcher:
        return _run_with_launcher(args, cells, folder, notes)
    summary = run_matrix(
        cells,
        folder,
        args.db,
        notes=notes,
        retry_failed=args.retry_failed,
        worker=args.worker_name,
        nproc_per_node=args.nproc_per_node,
    )
    db_url = args.db or default_db_url(folder)
    if not args.no_leaderboard:
        print(f"leaderboard: {leaderboard_from_store(db_url, folder)}", file=sys.stderr)
    print(
        f"{summary.total} cells: {summary.ran} run now, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; results in {redact_url(db_url)}",
        file=sys.stderr,
    )
    if summary.failed:
        print("failed cells: see `mixbench status`; rerun with --retry-failed", file=sys.stderr)
    return 1 if summary.failed else 0


def _run_with_launcher(
    args: argparse.Namespace, cells: list[Any], folder: Any, notes: list[str]
) -> int:
    """Validate and register the matrix, launch workers, wait, write the leaderboard."""
    from mixbench.bench.run.launch import SlurmOptions, launch_matrix, wait_for
    from mixbench.bench.run.matrix import check_out_dir, default_db_url, validate_matrix
    from mixbench.bench.run.store import DONE, FAILED, ResultStore
    from mixbench.commands.leaderboard import leaderboard_from_store

    validate_matrix(cells, {})
    check_out_dir(folder)
    db_url = args.db or default_db_url(folder)
    store = ResultStore(db_url)
    try:
        store.add_cells(cells)
    finally:
        store.close()
    print_lines(notes)
    slurm = SlurmOptions(
        partition=args.slurm_partition,
        time_minutes=args.slurm_time,
        gpus_per_task=args.slurm_gpus_per_task,
        cpus_per_task=args.slurm_cpus_per_task,
    )
    jobs = launch_matrix(
        args.launcher,
        args.workers,
        cells,
        folder,
        db_url,
        slurm,
        retry_failed=args.retry_failed,
        nproc_per_node=args.nproc_per_node,
    )
    print(
        f"launched {len(jobs)} {args.launcher} worker(s); logs in {folder}/launcher-logs",
        file=sys.stderr,
    )
    if args.launcher == "slurm":
        print("follow them with `mixbench status --db URL`", file=sys.stderr)
        return 0
    statuses = wait_for(jobs, log=sys.stderr)
    store = ResultStore(db_url)
    try:
        records = store.records(keys=[c.key for c in cells])
    finally:
        store.close()
    failed = [r for r in records if r.status == FAILED]
    not_done = [r for r in records if r.status != DONE]
    if not args.no_leaderboard:
        print(f"leaderboard: {leaderboard_from_store(db_url, folder)}", file=sys.stderr)
    print(
        f"{len(cells)} cells: {len(cells) - len(not_done)} done, {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if not_done or any(statuses) else 0


def print_lines(lines: list[str]) -> None:
    """Each of ``lines`` on standard error."""
    for line in lines:
        print(line, file=sys.stderr)


def print_dry_run(cells: list[Any]) -> int:
    """The cells as a table (method, non-default parameters, data, seed, training images)."""
    from functools import cache

    from tabulate import tabulate

    from mixbench.config import to_dict
    from mixbench.datasets import dataset_info
    from mixbench.leaderboard.markdown import format_params
    from mixbench.methods import default_params

    defaults = cache(default_params)
    _check_models_fit_declared_sizes(cells)
    rows, total, unknown = [], 0, False
    for c in cells:
        # The registered training-set size (no data needed), unless the options set one.
        size = c.dataset_options.get("train_subset") or c.dataset_options.get(
            "n_train", dataset_info(c.dataset).train_size
        )
        images = size * c.training_schedule().epochs if size else None
        total += images or 0
        unknown |= images is None
        changed = {
            k: v for k, v in c.params.items() if to_dict(defaults(c.method).get(k)) != to_dict(v)
        }
        named = "" if c.param_set == "default" else f"[{c.param_set}] "
        if c.epochs_scale != 1:
            named += f"[{c.epochs_scale}× epochs] "
        rows.append(
            [
                c.method,
                named + format_params(changed),
                c.dataset,
                c.model,
                c.seed,
                c.training_schedule().epochs,
                f"{images:,}" if images else "?",
            ]  # fmt: skip
        )
    headers = ["method", "non-default parameters", "dataset", "model", "seed", "epochs",
               "train images"]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    note = " (some data set sizes unknown)" if unknown else ""
    print(f"\n{len(cells)} cells, about {total:,} training images to process{note}")
    return 0


def _check_models_fit_declared_sizes(cells: list[Any]) -> None:
    """The model/data check of a real run, from the declared image sizes (no data loaded)."""
    from mixbench.bench.train.data import check_model_fits_size, declared_image_size

    seen = set()
    for c in cells:
        options = json.dumps([c.dataset_options, c.model_options], sort_keys=True, default=str)
        if (c.dataset, c.model, options) in seen:
            continue
        seen.add((c.dataset, c.model, options))
        size = declared_image_size(c.dataset, c.dataset_options)
        if size is not None:
            check_model_fits_size(c.model, c.model_options, size, c.dataset)
