"""The matrices and cells that the matrix options of a command line select."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mixbench.bench.run.cells import drop_unsupported
from mixbench.commands.options import out_dir
from mixbench.errors import UsageError

__all__ = [
    "all_cells",
    "cells_and_notes",
    "apply_overrides",
    "build_matrices",
    "drop_unsupported",
    "matrix_cells",
    "note_unused_params",
    "parameter_set_names",
]


def build_matrices(args: argparse.Namespace) -> list[Any]:
    """The matrices of the preset of ``args``, every command-line override applied to each,
    each checked for a batch its data sets can fill."""
    from mixbench.bench.run.cells import check_batch_fits
    from mixbench.config import load_matrices

    matrices = load_matrices(args.preset)
    for matrix in matrices:
        apply_overrides(matrix, args)
        check_batch_fits(matrix)
    note_unused_params(matrices, args.param)
    return matrices


def matrix_cells(matrix: Any, args: argparse.Namespace) -> list[Any]:
    """The cells of ``matrix`` (built by :func:`build_matrices`); under ``--param-set best``
    each method's parameters are the best trial of its study in the tuning storage of ``args``
    (``--tuning-storage``, by default ``OUT/tuning.db``)."""
    from mixbench.bench.run.cells import build_cells

    best = None
    if matrix.param_set == "best":
        from mixbench.bench.run.store import sqlite_url
        from mixbench.bench.tuning.best import best_params_from

        storage = args.tuning_storage or sqlite_url(out_dir(args) / "tuning.db")
        best = best_params_from(storage)
    return build_cells(matrix, best=best)


def all_cells(args: argparse.Namespace) -> list[Any]:
    """The cells of every matrix of ``args``, less those whose method cannot train the cell's
    model (TransMix on a CNN); :func:`cells_and_notes` also says why each pair was left out."""
    return cells_and_notes(args)[0]


def cells_and_notes(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    """:func:`all_cells` and one note line per method, model and reason left out. The caller
    prints the notes once the matrix has passed its checks, so that bad input still gets one
    line on standard error."""
    cells = [cell for matrix in build_matrices(args) for cell in matrix_cells(matrix, args)]
    return drop_unsupported(cells)


def note_unused_params(matrices: list[Any], params: list[str]) -> None:
    """Say so when a ``--param`` names a method that no cell of the matrices runs."""
    from mixbench.bench.run.cells import matrix_entries

    in_matrix = {method for m in matrices for method, *_ in matrix_entries(m)}
    for text in params:
        method = text.split("=", 1)[0].split(".", 1)[0].strip()
        if method not in in_matrix:
            print(
                f"mixbench: note: --param {text} has no effect: method {method!r} is not in the "
                f"matrix ({', '.join(sorted(in_matrix))}); add it with --methods",
                file=sys.stderr,
            )


def apply_overrides(matrix: Any, args: argparse.Namespace) -> None:
    """Apply the matrix options of ``args`` (``--set``, ``--methods``, ``--param``, ...) to
    ``matrix``; unknown names and malformed values are a :class:`UsageError`."""
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
            from mixbench.models import check_model_name

            check_model_name(name)


def parameter_set_names() -> list[str]:
    """``default``, ``best`` (tuned) and every set a registered method declares (``paper``,
    ``ce``, ...)."""
    from mixbench.methods import get_method_class, list_methods

    declared = {name for m in list_methods() for name in get_method_class(m).param_sets}
    return ["default", "best", *sorted(declared)]
