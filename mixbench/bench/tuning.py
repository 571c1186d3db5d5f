"""Hyper-parameter tuning with optuna: one study per method, equal budgets, validation data only.

A study is named ``preset/dataset/model/method`` (e.g. ``smoke/synthetic/preactresnet18/mixup``)
and searches the method's declared space (``Param.search``) with a seeded TPE sampler and median
pruning through optuna-integration's Ignite pruning handler. Every trial is one cell trained by
:func:`mixbench.bench.engine.train_cell` on the training set minus a class-balanced validation
split, and evaluated on that split: the test set is never looked at. The objective is the
validation top-1 of the last epoch.

Fairness is the point: a study's budget counts its finished trials (complete or pruned), so
``mixbench tune --all-methods --budget K`` gives every method exactly K trials of the same
schedule, and a rerun (or a second worker on the same storage) tops a study up to K and never
beyond. ``mixbench run --param-set best`` then trains every method with its study's best
parameters (:func:`best_param_set`) and records the study in the cell's ``param_set``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from mixbench.bench.cells import NO_TUNING_STORAGE
from mixbench.config import CellConfig, MatrixConfig, config_hash, to_dict
from mixbench.errors import UsageError
from mixbench.methods import MixMethod, get_method_class, resolve_params
from mixbench.seeding import trial_seed

VALIDATION_FRACTION = 0.1  # default validation split: this share of the training set
STARTUP_TRIALS = 5  # random trials before TPE models the space; trials before pruning starts
HEARTBEAT_SECONDS = 30  # a running trial's heartbeat; a silent one is failed after the grace
GRACE_SECONDS = 120
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BEST_PREFIX = "best:"  # a cell's param_set when its parameters come from a study

SearchSpace = dict[str, tuple[Any, ...]]


# -- names, storage, search space --------------------------------------------------------


def study_name(preset: str, dataset: str, model: str, method: str) -> str:
    """The study of one method on one data set and model: ``preset/dataset/model/method``."""
    return "/".join((preset, dataset, model, method))


def default_storage_url(out_dir: Path) -> str:
    """The default optuna storage of an output folder: SQLite ``DIR/tuning.db``."""
    from mixbench.bench.store import sqlite_url

    return sqlite_url(out_dir / "tuning.db")


def _redact(url: str) -> str:
    from mixbench.bench.store import redact_url

    return redact_url(url)


def create_storage(url: str, attempts: int = 5) -> RDBStorage:
    """A new connection to optuna's RDB storage at ``url``, with trial heartbeats.

    Workers starting together on a fresh database race to create its tables; the losers
    retry once the winner is done.
    """
    import time

    import sqlalchemy as sa

    def connect() -> RDBStorage:
        with warnings.catch_warnings():  # the heartbeat arguments are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)

    for attempt in range(attempts - 1):
        try:
            return connect()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            time.sleep(0.2 * (attempt + 1))
    return connect()


@functools.lru_cache(maxsize=8)
def _cached_storage(url: str) -> RDBStorage:
    return create_storage(url)


def open_storage(url: str, *, must_exist: bool = False) -> RDBStorage:
    """optuna's RDB storage at ``url`` (SQLite file, PostgreSQL, ...), with trial heartbeats.

    With ``must_exist``, a SQLite file that is not there is a :class:`UsageError` instead of a
    new empty database.
    """
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        raise UsageError(
            f"malformed storage URL {_redact(url)!r}: expected e.g. sqlite:///tuning.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if must_exist and not path.is_file():
            raise UsageError(
                f"no tuning storage at {path}: run `mixbench tune` first, or pass "
                "--tuning-storage URL"
            )
        if not path.parent.is_dir():
            raise UsageError(f"folder {path.parent} of the tuning storage does not exist")
    try:
        return _cached_storage(url)
    except Exception as exc:
        raise UsageError(
            f"cannot open tuning storage {_redact(url)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def search_space(cls: type[MixMethod]) -> SearchSpace:
    """The method's declared search space: parameter name -> optuna-style spec.

    A spec is ``("float", low, high, log)``, ``("int", low, high, log)`` or
    ``("categorical", choices)``; a malformed declaration is a ``ValueError`` (a bug of the
    method, not of the user).
    """
    space: SearchSpace = {}
    for key, param in cls.params.items():
        spec = param.search
        if spec is None:
            continue
        kind = spec[0] if spec else None
        if kind in ("float", "int"):
            ok = len(spec) == 4 and spec[1] < spec[2] and isinstance(spec[3], bool)
        elif kind == "categorical":
            ok = len(spec) == 2 and isinstance(spec[1], (tuple, list)) and len(spec[1]) > 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"method {cls.name!r} declares a malformed search space for {key!r}: {spec!r}; "
                "expected ('float'|'int', low, high, log) or ('categorical', choices)"
            )
        space[key] = tuple(spec)
    return space


def suggest_params(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """One value per searched parameter, drawn by the trial's sampler."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec[0] == "float":
            out[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]), log=spec[3])
        elif spec[0] == "int":
            out[key] = trial.suggest_int(key, int(spec[1]), int(spec[2]), log=spec[3])
        else:
            out[key] = trial.suggest_categorical(key, list(spec[1]))
    return out


def make_sampler(seed: int, trial_number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler of one trial, seeded from (seed, trial number).

    A fresh sampler per trial keeps a single worker reproducible (same seed and history, same
    suggestions) while workers sharing a study never draw the same random start-up points.
    """
    return optuna.samplers.TPESampler(
        seed=trial_seed(seed, trial_number),
        n_startup_trials=STARTUP_TRIALS,
    )


def make_pruner() -> optuna.pruners.BasePruner:
    """Median pruning: stop a trial whose validation top-1 is below the median of earlier
    trials at the same epoch, once 5 trials finished and from epoch 2 on (epoch 1 is noise)."""
    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=2)


# -- the validation split ----------------------------------------------------------------


def default_validation_size(n_train: int, num_classes: int) -> int:
    """10% of the training set, rounded to a multiple of the number of classes (at least one
    image per class)."""
    per_class = max(1, round(VALIDATION_FRACTION * n_train / num_classes))
    return per_class * num_classes


def check_validation_size(size: int, n_train: int, num_classes: int) -> int:
    """Refuse a validation size the class-balanced split cannot have; returns ``size``."""
    if size < num_classes or size % num_classes:
        lower = max(num_classes, size // num_classes * num_classes)
        raise UsageError(
            f"--validation {size} must be a positive multiple of the {num_classes} classes "
            f"(class-balanced); use e.g. {lower}"
        )
    if size >= n_train:
        raise UsageError(
            f"--validation {size} leaves nothing to train on ({n_train} training images); "
            f"use e.g. {default_validation_size(n_train, num_classes)}"
        )
    return size


# -- one study ---------------------------------------------------------------------------


def tuning_setup(cell: CellConfig, space: SearchSpace) -> dict[str, Any]:
    """What every trial of a study shares (trials are comparable only under the same setup)."""
    return {
        "schedule": to_dict(cell.schedule),
        "dataset_options": dict(cell.dataset_options),
        "model_options": dict(cell.model_options),
        "eval": to_dict(cell.eval),
        "seed": cell.seed,
        "fixed_params": to_dict({k: v for k, v in cell.params.items() if k not in space}),
    }


def finished_trials(trials: list[FrozenTrial], budget: int | None = None) -> list[FrozenTrial]:
    """The study's first ``budget`` finished (complete or pruned) trials by number (all if None).

    Several workers may overshoot a budget by a trial or two; only these count.
    """
    done = sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.number)
    return done if budget is None else done[:budget]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial within the study's budget (ties: the earliest), or None."""
    budget = study.user_attrs.get("budget")
    candidates = [
        t
        for t in finished_trials(study.get_trials(deepcopy=False), budget)
        if t.state == TrialState.COMPLETE and t.value is not None
    ]
    return max(candidates, key=lambda t: (t.value, -t.number)) if candidates else None


@dataclass
class StudyReport:
    """What one study holds after :func:`tune_study`."""

    name: str
    method: str
    complete: int
    pruned: int
    ran_now: int
    best_value: float | None
    best_params: dict[str, Any]


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class _HidePruned(logging.Filter):
    """Drops the Ignite engines' error line about an exception that is a pruned trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], optuna.TrialPruned)


def _load_study(
    cell: CellConfig,
    space: SearchSpace,
    storage: RDBStorage,
    budget: int,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create or join the cell's study; refuse one tuned under another setup."""
    name = study_name(cell.preset, cell.dataset, cell.model, cell.method)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(cell.seed, 0),
        pruner=pruner,
        load_if_exists=True,
    )
    setup = tuning_setup(cell, space)
    key = config_hash(setup)
    known = study.user_attrs.get("setup_key")
    if known is not None and known != key:
        before = study.user_attrs.get("setup", {})
        differs = sorted(k for k in setup if before.get(k) != setup[k]) or ["setup"]
        epochs = before.get("schedule", {}).get("epochs")
        detail = (
            f" (epochs {epochs} vs {cell.schedule.epochs})"
            if epochs != cell.schedule.epochs
            else ""
        )
        raise UsageError(
            f"study {name!r} was tuned with another {', '.join(differs)}{detail}; pass the "
            "same options as before, or another --storage"
        )
    attrs = {
        "preset": cell.preset,
        "dataset": cell.dataset,
        "model": cell.model,
        "method": cell.method,
        "setup": setup,
        "setup_key": key,
        "search_space": to_dict(space),
        # A smaller budget later runs nothing and keeps what was spent: the best stays the best.
        "budget": max(budget, study.user_attrs.get("budget", 0)),
    }
    for attr, value in attrs.items():
        if study.user_attrs.get(attr) != value:
            study.set_user_attr(attr, value)
    return study


def tune_study(
    cell: CellConfig,
    budget: int,
    storage: RDBStorage,
    out_dir: Path,
    *,
    pruner: optuna.pruners.BasePruner | None = None,
    bundle_cache: dict[Any, Any] | None = None,
    log: TextIO | None = None,
) -> StudyReport:
    """Run trials of ``cell``'s method until its study has ``budget`` finished trials.

    ``cell`` is the study's template: its ``dataset_options`` must hold the ``validation``
    size; each trial replaces its searched parameters. A study already at its budget runs
    nothing; trials still running in other workers count, so workers never overshoot on
    purpose. Each trial trains in ``out_dir/tuning/<study>/trial-NNNN``, removed afterwards.
    """
    from ignite.engine import Engine, Events
    from optuna_integration import PyTorchIgnitePruningHandler

    from mixbench.bench.engine import CellFailed, train_cell

    log = log or sys.stderr
    if not cell.dataset_options.get("validation"):
        raise ValueError("a tuning cell must carve a validation split (dataset_options)")
    cls = get_method_class(cell.method)
    space = search_space(cls)
    if not space:
        raise UsageError(f"method {cell.method!r} declares no search space: nothing to tune")
    bundle_cache = {} if bundle_cache is None else bundle_cache
    study = _load_study(cell, space, storage, budget, pruner or make_pruner())
    name = study.study_name
    root = out_dir / "tuning" / name

    def objective(trial: optuna.Trial) -> float:
        trial.study.sampler = make_sampler(cell.seed, trial.number)
        params = resolve_params(cls, {**cell.params, **suggest_params(trial, space)})
        trial_cell = dataclasses.replace(cell, params=params, param_set=f"trial:{name}")
        trial.set_user_attr("params", to_dict(params))
        trial.set_user_attr("cell", trial_cell.key)

        def setup(trainer: Engine, evaluator: Engine) -> None:
            handler = PyTorchIgnitePruningHandler(trial, "top1", trainer)
            evaluator.add_event_handler(Events.COMPLETED, handler)
            for engine in (trainer, evaluator):
                engine.logger.addFilter(_HidePruned())

        workdir = root / f"trial-{trial.number:04d}"
        shutil.rmtree(workdir, ignore_errors=True)  # a failed earlier try of this number
        try:
            result = train_cell(trial_cell, workdir, bundle_cache=bundle_cache, setup=setup)
        except CellFailed as exc:  # e.g. a NaN loss: these parameters are bad, not the code
            trial.set_user_attr("failed", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return float(result.metrics["top1"])

    ran_now = 0

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran_now
        ran_now += 1
        done = len(finished_trials(study.get_trials(deepcopy=False)))
        if trial.state == TrialState.COMPLETE:
            outcome = f"val top-1 {100 * trial.value:.2f}%"
        elif "failed" in trial.user_attrs:
            outcome = f"failed ({trial.user_attrs['failed']}): counted as pruned"
        else:
            steps = trial.intermediate_values
            last = max(steps) if steps else 0
            value = f" at val top-1 {100 * steps[last]:.2f}%" if steps else ""
            outcome = f"pruned after epoch {last}{value}"
        print(
            f"[{name}] trial {trial.number} ({done}/{budget}): "
            f"{_format_params(trial.params)} -> {outcome}",
            file=log,
            flush=True,
        )

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        done = len(finished_trials(trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= budget:
            break
        if done + running >= budget:
            print(
                f"[{name}] {running} trial(s) still running elsewhere complete the budget",
                file=log,
            )
            break
        study.optimize(objective, n_trials=1, callbacks=[report], gc_after_trial=False)

    study_budget = study.user_attrs["budget"]
    trials = finished_trials(study.get_trials(deepcopy=False), study_budget)
    best = best_trial(study)
    if ran_now == 0:
        print(f"[{name}] already has {len(trials)}/{study_budget} finished trials", file=log)
    return StudyReport(
        name=name,
        method=cell.method,
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        ran_now=ran_now,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
    )


# -- --param-set best --------------------------------------------------------------------


def find_study(
    storage: RDBStorage, preset: str, dataset: str, model: str, method: str
) -> str | None:
    """The study of ``method`` on ``dataset``/``model`` in ``storage``.

    The study of the same preset is preferred; otherwise the only study of that method, data
    set and model (e.g. tuned under ``smoke`` for a run of another preset). Several candidates
    and none of the preset's is a :class:`UsageError`.
    """
    wanted = study_name(preset, dataset, model, method)
    studies = storage.get_all_studies()
    if any(s.study_name == wanted for s in studies):
        return wanted
    candidates = sorted(
        s.study_name
        for s in studies
        if (s.user_attrs.get("method"), s.user_attrs.get("dataset"), s.user_attrs.get("model"))
        == (method, dataset, model)
    )
    if len(candidates) > 1:
        raise UsageError(
            f"several tuning studies of {method} on {dataset}/{model} "
            f"({', '.join(candidates)}) and none named {wanted!r}: keep one per --tuning-storage"
        )
    return candidates[0] if candidates else None


def best_params_from(storage_url: str | None) -> Callable[..., tuple[dict[str, Any], str]]:
    """The parameter set ``best`` read from the tuning storage at ``storage_url``, as
    :func:`mixbench.bench.cells.build_cells` takes it: ``best(method_cls, matrix, dataset,
    model) -> (params, label)`` (see :func:`best_param_set`)."""

    def best(
        cls: type[MixMethod], matrix: MatrixConfig, dataset: str, model: str
    ) -> tuple[dict[str, Any], str]:
        return best_param_set(cls, storage_url, matrix.name, dataset, model)

    return best


def best_param_set(
    cls: type[MixMethod],
    storage_url: str | None,
    preset: str,
    dataset: str,
    model: str,
    log: TextIO | None = None,
) -> tuple[dict[str, Any], str]:
    """The parameters of the param set ``best`` and the label recorded in the cell.

    Returns (the best trial's parameters, ``"best:<study name>"``), or ({}, ``"default"``)
    with a line on ``log`` when the method has no search space, no study, or no complete trial.
    """
    log = log or sys.stderr
    method = cls.name
    if storage_url is None:
        raise UsageError(NO_TUNING_STORAGE)
    if not search_space(cls):
        print(f"param set best: {method} declares no search space: default parameters", file=log)
        return {}, "default"
    storage = open_storage(storage_url, must_exist=True)
    name = find_study(storage, preset, dataset, model, method)
    where = f"{dataset}/{model}"
    if name is None:
        print(
            f"param set best: no study of {method} on {where} in {_redact(storage_url)}: "
            "default parameters",
            file=log,
        )
        return {}, "default"
    study = optuna.load_study(study_name=name, storage=storage)
    best = best_trial(study)
    if best is None:
        print(
            f"param set best: study {name} has no complete trial: {method} uses its defaults",
            file=log,
        )
        return {}, "default"
    stored = best.user_attrs.get("params") or dict(best.params)
    params = {k: v for k, v in stored.items() if k in cls.params}
    print(
        f"param set best: {method} on {where} uses trial {best.number} of study {name} "
        f"(val top-1 {100 * best.value:.2f}%): {_format_params(best.params)}",
        file=log,
    )
    return params, BEST_PREFIX + name


# -- the command -------------------------------------------------------------------------


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


def _select_matrix(
    args: argparse.Namespace, build_matrices: Callable[[argparse.Namespace], list[MatrixConfig]]
) -> MatrixConfig:
    from mixbench.datasets import DATASETS
    from mixbench.models import MODELS

    if args.dataset:
        DATASETS.get(args.dataset)
    if args.model:
        MODELS.get(args.model)
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


def cmd_tune(
    args: argparse.Namespace, build_matrices: Callable[[argparse.Namespace], list[MatrixConfig]]
) -> int:
    """``mixbench tune``: top every selected method's study up to the same trial budget.

    ``build_matrices(args)`` gives the matrices of the command line, overrides applied.
    """
    from mixbench.bench.cells import build_cells
    from mixbench.bench.data import load_bundle
    from mixbench.bench.matrix import check_out_dir

    budget = _budget_of(args)
    if args.method and not search_space(get_method_class(args.method)):
        raise UsageError(
            f"method {args.method!r} declares no search space: nothing to tune "
            "(it runs with its defaults)"
        )
    matrix = _select_matrix(args, build_matrices)
    cells = build_cells(matrix)
    out_dir = args.out if args.out is not None else Path("runs") / Path(args.preset).stem

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

    check_out_dir(out_dir)
    url = args.storage or args.tuning_storage or default_storage_url(out_dir)
    storage = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"tuning {len(cells)} method(s) on {matrix.datasets[0]}/{matrix.models[0]}: {budget} "
        f"trials each, {matrix.schedule.epochs} epochs, validation {size} of {n_train} training "
        f"images; storage {_redact(url)}",
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
            tune_study(cell, budget, storage, out_dir, bundle_cache=bundle_cache, log=sys.stderr)
        )
    _print_summary(reports)
    return 0


def _print_summary(reports: list[StudyReport]) -> None:
    from tabulate import tabulate

    rows = [
        [
            r.name,
            r.complete,
            r.pruned,
            f"{100 * r.best_value:.2f}%" if r.best_value is not None else "—",
            _format_params(r.best_params) or "—",
        ]
        for r in reports
    ]
    print(tabulate(rows, headers=["study", "complete", "pruned", "best val top-1", "best params"]))


__all__: list[str] = [
    "StudyReport",
    "best_param_set",
    "best_params_from",
    "best_trial",
    "check_validation_size",
    "cmd_tune",
    "create_storage",
    "default_storage_url",
    "default_validation_size",
    "find_study",
    "finished_trials",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "search_space",
    "study_name",
    "suggest_params",
    "tune_study",
    "tuning_setup",
]
