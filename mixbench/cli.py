"""The ``mixbench`` command line: run a matrix, write the leaderboard, list what is registered.

Bad input (unknown names, malformed options, missing data) ends with a one-line message on
standard error and exit status 2, without a traceback and without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mixbench.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"expected a comma-separated list, got {text!r}")
    return items


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {text!r}") from None


DB_ENV = "MIXBENCH_DB_URL"


def _add_db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get(DB_ENV),
        help=f"results database URL (default: ${DB_ENV}, else sqlite:///OUT/results.db); "
        "prefer the environment variable for URLs with passwords",
    )


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    """The options that select and override a matrix (shared by run, worker and tune)."""
    p.add_argument("--preset", default="smoke", help="preset name or TOML file (default: smoke)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<preset>)")
    _add_db_argument(p)
    p.add_argument("--methods", type=_csv, help="comma-separated method names (or patterns)")
    p.add_argument("--datasets", type=_csv, help="comma-separated data set names")
    p.add_argument("--models", type=_csv, help="comma-separated model names")
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, help="number of training epochs")
    p.add_argument("--data-root", help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="download data sets that support it")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="method parameter override, repeatable, e.g. mixup.alpha=0.4",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="preset override, repeatable, e.g. schedule.lr=0.05 or runtime.channels_last=true",
    )
    p.add_argument(
        "--param-set",
        default=None,
        help="named parameter set of every method: default (the methods' defaults), a set the "
        "methods declare (paper; ce for MultiMix and Dense MultiMix; see `mixbench methods "
        "--json`; methods without it run their defaults), or best (the best trial of each "
        "method's `mixbench tune` study)",
    )
    p.add_argument(
        "--tuning-storage",
        metavar="URL",
        help="optuna storage of --param-set best (default: sqlite:///OUT/tuning.db)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_matrices(args: argparse.Namespace) -> list[Any]:
    """The matrices of the preset of ``args``, every command-line override applied to each."""
    from mixbench.config import load_matrices

    matrices = load_matrices(args.preset)
    for matrix in matrices:
        _apply_overrides(matrix, args)
    _note_unused_params(matrices, args.param)
    return matrices


def matrix_cells(matrix: Any, args: argparse.Namespace) -> list[Any]:
    """The cells of ``matrix`` (built by :func:`build_matrices`); under ``--param-set best``
    each method's parameters are the best trial of its study in the tuning storage of ``args``
    (``--tuning-storage``, by default ``OUT/tuning.db``)."""
    from mixbench.bench.cells import build_cells

    best = None
    if matrix.param_set == "best":
        from mixbench.bench.store import sqlite_url
        from mixbench.bench.tuning import best_params_from

        storage = args.tuning_storage or sqlite_url(_out_dir(args) / "tuning.db")
        best = best_params_from(storage)
    return build_cells(matrix, best=best)


def _all_cells(args: argparse.Namespace) -> list[Any]:
    """The cells of every matrix of ``args``."""
    return [cell for matrix in build_matrices(args) for cell in matrix_cells(matrix, args)]


def _note_unused_params(matrices: list[Any], params: list[str]) -> None:
    """Say so when a ``--param`` names a method that no cell of the matrices runs."""
    from mixbench.bench.cells import matrix_entries

    in_matrix = {method for m in matrices for method, *_ in matrix_entries(m)}
    for text in params:
        method = text.split("=", 1)[0].split(".", 1)[0].strip()
        if method not in in_matrix:
            print(
                f"mixbench: note: --param {text} has no effect: method {method!r} is not in the "
                f"matrix ({', '.join(sorted(in_matrix))}); add it with --methods",
                file=sys.stderr,
            )


def _apply_overrides(matrix: Any, args: argparse.Namespace) -> None:
    from mixbench.config import apply_setting, parse_assignment
    from mixbench.datasets import list_datasets
    from mixbench.methods import get_method_class
    from mixbench.models import list_models

    for text in args.set:
        apply_setting(matrix, text)
    if args.methods:
        matrix.methods = args.methods
    if args.datasets:
        matrix.datasets = args.datasets
    if args.models:
        matrix.models = args.models
    if args.seeds:
        matrix.seeds = args.seeds
    if args.epochs is not None:
        matrix.schedule.epochs = args.epochs
    if args.data_root:
        matrix.runtime.data_root = args.data_root
    if args.download:
        matrix.runtime.download = True
    if args.device:
        matrix.runtime.device = args.device
    if args.no_progress:
        matrix.runtime.progress = False
    if args.param_set:
        valid = parameter_set_names()
        if args.param_set not in valid:
            raise UsageError(
                f"unknown parameter set {args.param_set!r}; valid sets: {', '.join(valid)}"
            )
        matrix.param_set = args.param_set
    for text in args.param:
        parts, value = parse_assignment(text, "--param")
        if len(parts) != 2:
            raise UsageError(
                f"malformed --param {text!r}: expected METHOD.KEY=VALUE, e.g. mixup.alpha=0.4"
            )
        method, key = parts
        cls = get_method_class(method)
        if key not in cls.params:
            valid = ", ".join(sorted(cls.params)) or "none"
            raise UsageError(f"method {method!r} has no parameter {key!r}; its parameters: {valid}")
        matrix.method_params.setdefault(method, {})[key] = cls.params[key].parse(key, value)
    valid_datasets, valid_models = list_datasets(), list_models()
    for name in matrix.datasets:
        if name not in valid_datasets:
            from mixbench.datasets import DATASETS

            DATASETS.get(name)  # raises with the valid names
    for name in matrix.models:
        if name not in valid_models:
            from mixbench.models import MODELS

            MODELS.get(name)


def parameter_set_names() -> list[str]:
    """``default``, ``best`` (tuned) and every set a registered method declares (``paper``,
    ``ce``, ...)."""
    from mixbench.methods import get_method_class, list_methods

    declared = {name for m in list_methods() for name in get_method_class(m).param_sets}
    return ["default", "best", *sorted(declared)]


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out if args.out is not None else Path("runs") / Path(args.preset).stem


def cmd_run(args: argparse.Namespace) -> int:
    """``mixbench run``: run every cell not done yet, then write the leaderboard."""
    cells = _all_cells(args)
    if args.dry_run:
        return _print_dry_run(cells)
    from mixbench.bench.matrix import default_db_url, run_matrix
    from mixbench.bench.store import redact_url

    out_dir = _out_dir(args)
    if args.launcher:
        return _run_with_launcher(args, cells, out_dir)
    summary = run_matrix(
        cells,
        out_dir,
        args.db,
        retry_failed=args.retry_failed,
        worker=args.worker_name,
        nproc_per_node=args.nproc_per_node,
    )
    db_url = args.db or default_db_url(out_dir)
    if not args.no_leaderboard:
        path = _write_leaderboard(db_url, out_dir)
        print(f"leaderboard: {path}", file=sys.stderr)
    print(
        f"{summary.total} cells: {summary.ran} run now, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; results in {redact_url(db_url)}",
        file=sys.stderr,
    )
    if summary.failed:
        print("failed cells: see `mixbench status`; rerun with --retry-failed", file=sys.stderr)
    return 1 if summary.failed else 0


def worker_job(argv: list[str]) -> int:
    """What each launched job runs: ``mixbench worker ARGV``; returns its exit status."""
    return main(["worker", *argv])


def cmd_tune(args: argparse.Namespace) -> int:
    """``mixbench tune``: the tuning command, given how the command line builds matrices."""
    from mixbench.bench.tuning import cmd_tune as tune

    return tune(args, build_matrices)


def matrix_argv(args: argparse.Namespace) -> list[str]:
    """The matrix options of ``args`` as command-line words (for launched workers)."""
    out = ["--preset", args.preset]
    for name in ("methods", "datasets", "models"):
        if getattr(args, name):
            out += [f"--{name}", ",".join(getattr(args, name))]
    if args.seeds:
        out += ["--seeds", ",".join(str(s) for s in args.seeds)]
    if args.epochs is not None:
        out += ["--epochs", str(args.epochs)]
    for name in ("data_root", "device", "param_set", "tuning_storage"):
        if getattr(args, name):
            out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.download:
        out.append("--download")
    for text in args.param:
        out += ["--param", text]
    for text in args.set:
        out += ["--set", text]
    return out


def _run_with_launcher(args: argparse.Namespace, cells: list[Any], out_dir: Path) -> int:
    """Validate and register the matrix, launch workers, wait, write the leaderboard."""
    from mixbench.bench.launch import (
        SlurmOptions,
        environment,
        launch_workers,
        shared_cpu_environment,
        wait_for,
    )
    from mixbench.bench.matrix import check_out_dir, default_db_url, validate_matrix
    from mixbench.bench.store import DONE, FAILED, ResultStore

    validate_matrix(cells, {})
    check_out_dir(out_dir)
    db_url = args.db or default_db_url(out_dir)
    store = ResultStore(db_url)
    try:
        store.add_cells(cells)
    finally:
        store.close()
    slurm = SlurmOptions(
        partition=args.slurm_partition,
        time_minutes=args.slurm_time,
        gpus_per_task=args.slurm_gpus_per_task,
        cpus_per_task=args.slurm_cpus_per_task,
    )
    # The URL travels in the environment (copied into the jobs when they are submitted), not
    # on command lines or in submitit's job files.
    argv = [*matrix_argv(args), "--out", str(out_dir), "--no-progress"]
    env = {DB_ENV: db_url}
    if args.launcher == "local":
        env.update(shared_cpu_environment(args.workers))
    with environment(env):
        jobs = launch_workers(
            args.launcher, args.workers, argv, out_dir / "launcher-logs", slurm, entry=worker_job
        )
    print(
        f"launched {len(jobs)} {args.launcher} worker(s); logs in {out_dir}/launcher-logs",
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
        print(f"leaderboard: {_write_leaderboard(db_url, out_dir)}", file=sys.stderr)
    print(
        f"{len(cells)} cells: {len(cells) - len(not_done)} done, {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if not_done or any(statuses) else 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``mixbench worker``: claim and run cells of a shared database until none is left."""
    from mixbench.bench.matrix import run_matrix

    cells = _all_cells(args)
    summary = run_matrix(
        cells,
        _out_dir(args),
        args.db,
        retry_failed=args.retry_failed,
        worker=args.worker_name,
        nproc_per_node=args.nproc_per_node,
    )
    print(
        f"worker done: {summary.ran} cells run, {len(summary.failed)} failed in the matrix",
        file=sys.stderr,
    )
    return 0


def _store_url(args: argparse.Namespace) -> str:
    from mixbench.bench.matrix import default_db_url

    if args.db:
        return args.db
    if not (args.out / "results.db").is_file():
        raise UsageError(
            f"no results database in {args.out}: run `mixbench run --out {args.out}` first "
            "or pass --db URL"
        )
    return default_db_url(args.out)


# What `mixbench status --json` shows of each cell (plus the metrics of finished ones).
STATUS_FIELDS = (
    "key",
    "preset",
    "method",
    "dataset",
    "model",
    "seed",
    "status",
    "worker",
    "attempts",
    "started_at",
    "heartbeat",
    "error",
)


def cmd_status(args: argparse.Namespace) -> int:
    """``mixbench status``: every cell of a results database and where it stands."""
    import datetime as dt

    from tabulate import tabulate

    from mixbench.bench.store import ResultStore

    store = ResultStore(_store_url(args))
    try:
        records = store.records()
    finally:
        store.close()
    cells = [
        {name: getattr(r, name) for name in STATUS_FIELDS}
        | {"metrics": r.metrics if r.status == "done" else None}
        for r in records
    ]
    if args.json:
        print(json.dumps(cells, indent=2, default=str))
        return 0

    def when(ts: float | None) -> str:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""

    rows = []
    for c in cells:
        if c["status"] == "done":
            detail = f"top-1 {100 * c['metrics']['top1']:.2f}%"
        elif c["status"] == "running":
            detail = f"on {c['worker']} since {when(c['started_at'])}"
        else:
            detail = (c["error"] or "").splitlines()[0][:80] if c["error"] else ""
        rows.append(
            [
                c["key"],
                c["preset"],
                c["method"],
                c["dataset"],
                c["model"],
                c["seed"],
                c["status"],
                c["attempts"],
                detail,
            ]
        )
    print(
        tabulate(
            rows,
            headers=[
                "key",
                "preset",
                "method",
                "dataset",
                "model",
                "seed",
                "status",
                "attempts",
                "detail",
            ],
        )
    )
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "no cells")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``mixbench export``: finished cells as JSON Lines, one object per cell."""
    from mixbench.bench.store import ResultStore
    from mixbench.bench.transfer import export_records, write_jsonl

    store = ResultStore(_store_url(args))
    try:
        records = export_records(store, preset=args.preset)
    finally:
        store.close()
    count = write_jsonl(records, args.file)
    print(f"exported {count} finished cells to {args.file}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``mixbench import``: load exported cells into a results database, skipping known ones."""
    from mixbench.bench.matrix import check_out_dir, default_db_url
    from mixbench.bench.store import ResultStore
    from mixbench.bench.transfer import import_records, read_results_path

    records = [r for path in args.files for r in read_results_path(path)]
    if not args.db:
        check_out_dir(args.out)
    store = ResultStore(args.db or default_db_url(args.out))
    try:
        added, skipped = import_records(store, records)
    finally:
        store.close()
    print(f"imported {added} cells, skipped {skipped} already present", file=sys.stderr)
    return 0


def _print_dry_run(cells: list[Any]) -> int:
    from functools import cache

    from tabulate import tabulate

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
        images = size * c.schedule.epochs if size else None
        total += images or 0
        unknown |= images is None
        changed = {k: v for k, v in c.params.items() if defaults(c.method).get(k) != v}
        named = "" if c.param_set == "default" else f"[{c.param_set}] "
        rows.append(
            [
                c.method,
                named + format_params(changed),
                c.dataset,
                c.model,
                c.seed,
                c.schedule.epochs,
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
    from mixbench.bench.data import check_model_fits_size, declared_image_size

    seen = set()
    for c in cells:
        options = json.dumps([c.dataset_options, c.model_options], sort_keys=True, default=str)
        if (c.dataset, c.model, options) in seen:
            continue
        seen.add((c.dataset, c.model, options))
        size = declared_image_size(c.dataset, c.dataset_options)
        if size is not None:
            check_model_fits_size(c.model, c.model_options, size, c.dataset)


def _write_leaderboard(db_url: str, out_dir: Path) -> Path:
    from mixbench.leaderboard import records_from_store, write_leaderboard

    return write_leaderboard(records_from_store(db_url), out_dir)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """``mixbench leaderboard``: regenerate ``DIR/LEADERBOARD.md`` and its plots."""
    from mixbench.leaderboard import write_leaderboard

    if args.from_path is not None:
        from mixbench.bench.transfer import read_results_path

        records = read_results_path(args.from_path)
        if not args.db:
            from mixbench.bench.matrix import check_out_dir

            check_out_dir(args.out)
        path = write_leaderboard(records, args.out)
    else:
        path = _write_leaderboard(_store_url(args), args.out)
    print(path)
    return 0


def cmd_sweep_table(args: argparse.Namespace) -> int:
    """``mixbench sweep-table``: one preset's cells as a parameter-sweep page (Markdown)."""
    from mixbench.fileio import atomic_write_text
    from mixbench.leaderboard import build_tables
    from mixbench.leaderboard.sweep import render_sweep_page

    if args.from_path is not None:
        from mixbench.bench.transfer import read_results_path

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


def cmd_methods(args: argparse.Namespace) -> int:
    """``mixbench methods``: the registered methods, as a table or JSON."""
    from tabulate import tabulate

    from mixbench.methods import list_methods, method_info

    infos = [method_info(name) for name in list_methods()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    rows = [
        [
            i["name"],
            i["description"],
            ", ".join(f"{k}={p['default']!r}" for k, p in i["params"].items()) or "—",
        ]
        for i in infos
    ]
    print(tabulate(rows, headers=["method", "description", "parameters (defaults)"]))
    return 0


def cmd_evaluators(args: argparse.Namespace) -> int:
    """``mixbench evaluators``: the registered evaluators, as a table or JSON."""
    from tabulate import tabulate

    from mixbench.bench.evaluators import evaluator_info, list_evaluators

    infos = [evaluator_info(name) for name in list_evaluators()]
    if args.json:
        print(json.dumps(infos, indent=2, default=str))
        return 0
    rows = [
        [
            i["name"],
            i["description"],
            ", ".join(c["header"] for c in i["columns"]) or "—",
            ", ".join(f"{k}={s['default']!r}" for k, s in i["settings"].items()) or "—",
        ]
        for i in infos
    ]
    print(tabulate(rows, headers=["evaluator", "description", "columns", "settings (defaults)"]))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """``mixbench datasets``: the registered data sets and what is known about each."""
    from tabulate import tabulate

    from mixbench.datasets import dataset_info, list_datasets

    infos = [{"name": name, **dataset_info(name).as_dict()} for name in list_datasets()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0

    def fact(value: Any) -> str:
        return "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    rows = [
        [
            i["name"],
            i["display_name"],
            fact(i["num_classes"]),
            fact(i["train_size"]),
            fact(i["test_size"]),
            "x".join(str(v) for v in i["image_size"]) if i["image_size"] else "—",
            (i["corruption_benchmark"] or {}).get("name", "—"),
            fact(i["paper_epochs"]),
            len(i["published"]) or "—",
            ("generated: " if i["generated"] else "") + i["description"],
        ]
        for i in infos
    ]
    headers = ["data set", "name", "classes", "train", "test", "size", "corruptions",
               "paper epochs", "published", "description"]  # fmt: skip
    print(tabulate(rows, headers=headers, disable_numparse=True))
    return 0


def cmd_list(kind: str) -> Any:
    """``mixbench models|presets``: one name per line."""

    def run(args: argparse.Namespace) -> int:
        if kind == "models":
            from mixbench.models import list_models as lister
        else:
            from mixbench.config import list_presets as lister
        print("\n".join(lister()))
        return 0

    return run


def cmd_perf(args: argparse.Namespace) -> int:
    """``mixbench perf``: every speed benchmark, ratios measured in one run."""
    from mixbench.bench.perf import run_perf

    return run_perf(args)


def _lazy(module: str, function: str) -> Any:
    """A command function imported only when its subcommand runs (keeps startup fast)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return run


def _plugin_parser() -> argparse.ArgumentParser:
    """The ``--plugin`` option that every subcommand takes (``mixbench run --plugin M ...``)."""
    from mixbench.plugins import PLUGINS_ENV

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) first: methods, models or data sets "
        f"it registers become available; repeatable; also ${PLUGINS_ENV} (comma-separated)",
    )
    return common


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = _plugin_parser()
    parser = _Parser(prog="mixbench", description=__doc__.splitlines()[0].replace("``", ""))
    from mixbench import __version__

    parser.add_argument("--version", action="version", version=f"mixbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    run = add("run", help="run a benchmark matrix, then write the leaderboard")
    add_matrix_arguments(run)
    run.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    run.add_argument("--worker-name", help="name recorded with claimed cells")
    run.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="processes per cell (DistributedDataParallel through ignite.distributed)",
    )
    run.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="run the matrix on workers launched through submitit",
    )
    run.add_argument("--workers", type=int, default=2, help="number of launched workers")
    run.add_argument("--slurm-partition", help="SLURM partition of the workers")
    run.add_argument("--slurm-time", type=int, default=24 * 60, help="minutes per worker job")
    run.add_argument("--slurm-gpus-per-task", type=int, default=1, help="GPUs per worker")
    run.add_argument("--slurm-cpus-per-task", type=int, default=8, help="CPUs per worker")
    run.add_argument("--no-leaderboard", action="store_true", help="skip the leaderboard")
    run.add_argument(
        "--dry-run", action="store_true", help="list the cells without training (no data needed)"
    )
    run.set_defaults(func=cmd_run)

    lb = add("leaderboard", help="write DIR/LEADERBOARD.md and DIR/plots/")
    lb.add_argument("--out", type=Path, required=True, help="the run's output folder")
    _add_db_argument(lb)
    lb.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        help="build from exported cells instead: a .jsonl file or a folder of them",
    )
    lb.set_defaults(func=cmd_leaderboard)

    sweep = add("sweep-table", help="write one preset's cells as a parameter-sweep page (Markdown)")
    sweep.add_argument("--preset", required=True, help="the sweep's preset, e.g. sweep-multimix")
    sweep.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    sweep.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        help="exported cells: a .jsonl file or a folder of them",
    )
    sweep.add_argument("--db", help="or a results database URL")
    sweep.set_defaults(func=cmd_sweep_table)

    worker = add("worker", help="claim and run cells of a shared database")
    add_matrix_arguments(worker)
    worker.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    worker.add_argument("--nproc-per-node", type=int, default=1, help="processes per cell")
    worker.add_argument("--worker-name", help="name recorded with claimed cells")
    worker.set_defaults(func=cmd_worker)

    status = add("status", help="every cell of a results database")
    status.add_argument("--out", type=Path, default=Path("runs/smoke"), help="a run's folder")
    _add_db_argument(status)
    status.add_argument("--json", action="store_true", help="print a JSON list of cells")
    status.set_defaults(func=cmd_status)

    export = add("export", help="finished cells as JSON Lines")
    export.add_argument("--out", dest="file", type=Path, required=True, help="FILE.jsonl to write")
    export.add_argument(
        "--from",
        dest="out",
        type=Path,
        default=Path("runs/smoke"),
        help="the run's folder (its results.db)",
    )
    _add_db_argument(export)
    export.add_argument("--preset", help="only the cells of this preset")
    export.set_defaults(func=cmd_export)

    imp = add("import", help="load exported cells into a results database")
    imp.add_argument("files", nargs="+", type=Path, help=".jsonl files or folders of them")
    imp.add_argument("--out", type=Path, default=Path("runs/smoke"), help="the run's folder")
    _add_db_argument(imp)
    imp.set_defaults(func=cmd_import)

    methods = add("methods", help="list the registered methods")
    methods.add_argument("--json", action="store_true", help="print a JSON list")
    methods.set_defaults(func=cmd_methods)

    evaluators = add("evaluators", help="list the registered evaluators")
    evaluators.add_argument("--json", action="store_true", help="print a JSON list")
    evaluators.set_defaults(func=cmd_evaluators)

    datasets = add("datasets", help="list the registered data sets and what is known about each")
    datasets.add_argument("--json", action="store_true", help="print a JSON list")
    datasets.set_defaults(func=cmd_datasets)

    for kind in ("models", "presets"):
        add(kind, help=f"list the registered {kind}").set_defaults(func=cmd_list(kind))

    tune = add("tune", help="optuna search over a method's declared search space")
    add_matrix_arguments(tune)
    tune.add_argument("--method", help="the method to tune")
    tune.add_argument(
        "--all-methods",
        action="store_true",
        help="tune every method of the matrix with the same budget",
    )
    tune.add_argument("--dataset", help="data set (default: the preset's first)")
    tune.add_argument("--model", help="model (default: the preset's first)")
    tune.add_argument("--trials", type=int, help="trials per method")
    tune.add_argument("--budget", type=int, help="trials per method with --all-methods")
    tune.add_argument("--storage", help="optuna storage URL (default: sqlite:///OUT/tuning.db)")
    tune.add_argument(
        "--validation", type=int, help="size of the validation split carved from the training set"
    )
    tune.set_defaults(func=cmd_tune)

    evaluate = add("evaluate", help="run every evaluator on a saved checkpoint")
    evaluate.add_argument("checkpoint", type=Path, help="a checkpoint_<epoch>.pt of a cell")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--data-root", help="data root, if it moved since training")
    evaluate.set_defaults(func=_lazy("mixbench.bench.evaluate", "cmd_evaluate"))

    show = add("show", help="draw what a method does to one batch")
    show.add_argument("method", help="registered method name")
    show.add_argument("--out", type=Path, required=True, help="PNG file to write")
    show.add_argument("--dataset", default="synthetic", help="data set to draw a batch from")
    show.add_argument("--data-root", help="data root of that data set")
    show.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, repeatable",
    )
    show.add_argument("--seed", type=int, default=0, help="seed of the batch and the draws")
    show.set_defaults(func=_lazy("mixbench.leaderboard.show", "cmd_show"))

    perf = add("perf", help="speed benchmarks (ratios measured in one run)")
    perf.add_argument(
        "--json", type=Path, dest="json_path", metavar="FILE", help="also write the results as JSON"
    )
    perf.add_argument("--device", default="auto", help="auto, cpu or cuda")
    perf.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed steps per method; timed rounds of the engine and end_to_end benchmarks",
    )
    perf.add_argument("--warmup", type=int, default=2, help="untimed steps or rounds first")
    perf.add_argument(
        "--only",
        type=_csv,
        help="run only these benchmarks: methods, loader, engine, end_to_end (comma-separated)",
    )
    perf.add_argument(
        "--data-root",
        metavar="DIR",
        help="image folder (train/<class>/ plus val/ or test/, e.g. the CIFAR-10 JPEGs) for the "
        "loader and end_to_end benchmarks (default: synthetic images written as JPEG files)",
    )
    perf.add_argument(
        "--threads", type=int, help="torch intra-op threads during the benchmarks (default: as set)"
    )
    perf.add_argument(
        "--quick", action="store_true", help="tiny sizes: check that the benchmarks run (seconds)"
    )
    perf.set_defaults(func=cmd_perf)
    return parser


def _load_plugins(args: argparse.Namespace) -> None:
    """Import the ``--plugin`` modules, and name them in the environment for child processes."""
    from mixbench.plugins import export_plugins, load_environment_plugins, load_plugins

    load_environment_plugins()
    load_plugins(args.plugin)
    export_plugins(args.plugin)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixbench`` console script; returns the exit status.

    SIGTERM is handled like Ctrl-C: the running cell is marked interrupted and keeps its last
    checkpoint, and the same command resumes it.
    """
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args = make_parser().parse_args(argv)
        _load_plugins(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`mixbench status --json | head`): not an error of ours. Point
        # standard output at /dev/null so that Python's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except UsageError as exc:
        print(f"mixbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mixbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
