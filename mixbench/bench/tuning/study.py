"""Hyper-parameter tuning with optuna: one study per method, equal budgets, validation data only.

A study is named ``preset/dataset/model/method`` (e.g. ``smoke/synthetic/preactresnet18/mixup``)
and searches the method's declared space (``Param.search``) with a seeded TPE sampler and median
pruning through optuna-integration's Ignite pruning handler. Every trial is one cell trained by
:func:`mixbench.bench.train.engine.train_cell` on the training set minus a class-balanced validation
split, and evaluated on that split: the test set is never looked at. The objective is the
validation top-1 of the last epoch.

Fairness is the point: a study's budget counts its finished trials (complete or pruned), so
``mixbench tune --all-methods --budget K`` gives every method exactly K trials of the same
schedule, and a rerun (or a second worker on the same storage) tops a study up to K and never
beyond. ``mixbench run --param-set best`` then trains every method with its study's best
parameters (:mod:`mixbench.bench.tuning.best`) and records the study in the cell's
``param_set``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from mixbench.bench.tuning.space import (
    SearchSpace,
    make_pruner,
    make_sampler,
    search_space,
    suggest_params,
)
from mixbench.bench.tuning.storage import study_name
from mixbench.config import CellConfig, config_hash, to_dict
from mixbench.errors import UsageError
from mixbench.methods import get_method_class, resolve_params
from mixbench.names import file_part

VALIDATION_FRACTION = 0.1  # default validation split: this share of the training set
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

__all__ = [
    "FINISHED",
    "StudyReport",
    "best_trial",
    "check_validation_size",
    "default_validation_size",
    "finished_trials",
    "format_params",
    "study_folder",
    "tune_study",
    "tuning_setup",
]


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


def study_folder(out_dir: Path, name: str) -> Path:
    """Where the trials of study ``name`` (``preset/dataset/model/method``) are written:
    ``out_dir/tuning/<each part of the name as one plain file name>``, never outside
    ``out_dir`` whatever the names hold."""
    return out_dir.joinpath("tuning", *(file_part(part) for part in name.split("/")))


def tuning_setup(cell: CellConfig, space: SearchSpace) -> dict[str, Any]:
    """What every trial of a study shares (trials are comparable only under the same setup)."""
    return {
        "schedule": to_dict(cell.schedule),
        "dataset_options": dict(cell.dataset_options),
        "model_options": dict(cell.model_options),
        "eval": to_dict(cell.eval),
        "seed": cell.seed,
        # The parameters the cell's key sees: an option added to the method later, at its
        # default, leaves the setup (and so every study tuned before it) as it was.
        "fixed_params": to_dict({k: v for k, v in cell.keyed_params().items() if k not in space}),
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


def format_params(params: dict[str, Any]) -> str:
    """``alpha=0.4, k=3``: parameters as a log line shows them."""
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

    from mixbench.bench.train.engine import CellFailed, train_cell

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
    root = study_folder(out_dir, name)

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
            f"{format_params(trial.params)} -> {outcome}",
            file=log,
            flush=True,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    done = len(finished_trials(trials))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if done < budget <= done + running:
        print(f"[{name}] {running} trial(s) still running elsewhere complete the budget", file=log)
    elif done < budget:
        # optuna stops the loop once the finished trials, with those still running in other
        # workers, reach the budget (it fails stale trials before each new one).
        enough = MaxTrialsCallback(budget, states=(*FINISHED, TrialState.RUNNING))
        study.optimize(objective, callbacks=[report, enough], gc_after_trial=False)

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
