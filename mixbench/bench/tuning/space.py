"""A method's declared search space, and the seeded sampler and pruner that search it."""

from __future__ import annotations

from typing import Any

import optuna

from mixbench.methods import MixMethod
from mixbench.seeding import trial_seed

STARTUP_TRIALS = 5  # random trials before TPE models the space; trials before pruning starts

SearchSpace = dict[str, tuple[Any, ...]]

__all__ = ["SearchSpace", "make_pruner", "make_sampler", "search_space", "suggest_params"]


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
