"""``mixbench tune``: an optuna study per method over its declared search space, equal budgets.

Each study trains on the training set minus a class-balanced validation split and is scored on
that split (the test set is never looked at); ``mixbench run --param-set best`` then trains
every method with its study's best parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from mixbench.commands.matrices import build_matrices
from mixbench.commands.options import add_matrix_arguments, out_dir
from mixbench.config import MatrixConfig
from mixbench.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The matrix options and what to tune with which budget."""
    add_matrix_arguments(p)
    p.add_argument("--method", help="the method to tune")
    p.add_argument(
        "--all-methods",
        action="store_true",
        help="tune every method of the matrix with the same budget",
    )
    p.add_argument("--dataset", help="data set (default: the preset's first)")
    p.add_argument("--model", help="model (default: the preset's first)")
    p.add_argument("--trials", type=int, help="trials per method")
    p.add_argument("--budget", type=int, help="trials per method with --all-methods")
    p.add_argument("--storage", help="optuna storage URL (default: sqlite:///OUT/tuning.db)")
    p.add_argument(
        "--validation", type=int, help="size of the validation split carved from the training set"
    )


def _budget_of(args: argparse.Namespace) -> int:
    if args.method and args.all_methods:
        raise UsageError("pass either --method NAME or --all-methods, not both")
    if not args.method and not args.all_methods:
        raise UsageError("pass --method NAME (one method) or --all-methods (every method)")
    given = [args.budget, args.trials] if args.all_methods else [args.trials, args.budget]
    budget = next((n for n in given if n is not None), None)
    if budget is None:
        option = "--budget K" if args.all_methods else "--trials N"
        raise UsageError(f"pass {option}: the number of finished trials per method")
    if budget < 1:
        raise UsageError(f"the number of trials must be >= 1, got {budget}")
    return budget


def _select_matrix(args: argparse.Namespace) -> MatrixConfig:
    from mixbench.datasets import DATASETS
    from mixbench.models import check_model_name

    if args.dataset:
        DATASETS.get(args.dataset)
    if args.model:
        check_model_name(args.model)
    matrices = build_matrices(args)
    matrix = next((m for m in matrices if args.dataset in m.datasets), matrices[0])
    if matrix.param_set.startswith("best"):
        raise UsageError("mixbench tune searches parameters: --param-set best is for run")
    matrix.datasets = [args.dataset or matrix.datasets[0]]
    matrix.models = [args.model or matrix.models[0]]
    matrix.seeds = matrix.seeds[:1]
    if args.method:
        matrix.methods = [args.method]
    return matrix


def run(args: argparse.Namespace) -> int:
    """Top every selected method's study up to the same trial budget."""
    import optuna

    from mixbench.bench.run.cells import build_cells
    from mixbench.bench.run.matrix import check_method_requirements, check_out_dir
    from mixbench.bench.run.store import redact_url
    from mixbench.bench.train.data import load_bundle
    from mixbench.bench.tuning import (
        check_validation_size,
        default_storage_url,
        default_validation_size,
        open_storage,
        search_space,
        tune_study,
    )
    from mixbench.methods import get_method_class

    budget = _budget_of(args)
    if args.method and not search_space(get_method_class(args.method)):
        raise UsageError(
            f"method {args.method!r} declares no search space: nothing to tune "
            "(it runs with its defaults)"
        )
    matrix = _select_matrix(args)
    cells = build_cells(matrix)
    folder = out_dir(args)

    check_method_requirements(cells)
    # The validation split: carved from the training set once, the same for every trial.
    bundle_cache: dict[Any, Any] = {}
    full = load_bundle(cells[0], cache=bundle_cache)
    n_train, classes = len(full.train), full.num_classes
    size = args.validation or default_validation_size(n_train, classes)
    size = check_validation_size(size, n_train, classes)
    cells = [
        dataclasses.replace(c, dataset_options={**c.dataset_options, "validation": size})
        for c in cells
    ]
    load_bundle(cells[0], cache=bundle_cache)  # model fits the data, before any write

    check_out_dir(folder)
    url = args.storage or args.tuning_storage or default_storage_url(folder)
    storage = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"tuning {len(cells)} method(s) on {matrix.datasets[0]}/{matrix.models[0]}: {budget} "
        f"trials each, {matrix.schedule.epochs} epochs, validation {size} of {n_train} training "
        f"images; storage {redact_url(url)}",
        file=sys.stderr,
    )
    reports = []
    for cell in cells:
        if not search_space(get_method_class(cell.method)):
            print(
                f"{cell.method}: no search space, runs with its defaults; skipped", file=sys.stderr
            )
            continue
        reports.append(
            tune_study(cell, budget, storage, folder, bundle_cache=bundle_cache, log=sys.stderr)
        )
    _print_summary(reports)
    return 0


def _print_summary(reports: list[Any]) -> None:
    from tabulate import tabulate

    from mixbench.bench.tuning import format_params

    rows = [
        [
            r.name,
            r.complete,
            r.pruned,
            f"{100 * r.best_value:.2f}%" if r.best_value is not None else "—",
            format_params(r.best_params) or "—",
        ]
        for r in reports
    ]
    print(tabulate(rows, headers=["study", "complete", "pruned", "best val top-1", "best params"]))
