"""Hyper-parameter tuning with optuna: one study per method, equal budgets, validation data only.

- :mod:`~mixbench.bench.tuning.storage`: the RDB storage (SQLite, PostgreSQL) and study names;
- :mod:`~mixbench.bench.tuning.space`: a method's declared search space, sampler and pruner;
- :mod:`~mixbench.bench.tuning.study`: the validation split and one study topped up to its budget;
- :mod:`~mixbench.bench.tuning.best`: ``--param-set best``, the best trial's parameters.
"""

from __future__ import annotations

from mixbench.bench.tuning.best import BEST_PREFIX, best_param_set, best_params_from, find_study
from mixbench.bench.tuning.space import (
    SearchSpace,
    make_pruner,
    make_sampler,
    search_space,
    suggest_params,
)
from mixbench.bench.tuning.storage import (
    create_storage,
    default_storage_url,
    open_storage,
    study_name,
)
from mixbench.bench.tuning.study import (
    FINISHED,
    StudyReport,
    best_trial,
    check_validation_size,
    default_validation_size,
    finished_trials,
    format_params,
    tune_study,
    tuning_setup,
)

__all__ = [
    "BEST_PREFIX",
    "FINISHED",
    "SearchSpace",
    "StudyReport",
    "best_param_set",
    "best_params_from",
    "best_trial",
    "check_validation_size",
    "create_storage",
    "default_storage_url",
    "default_validation_size",
    "find_study",
    "finished_trials",
    "format_params",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "search_space",
    "study_name",
    "suggest_params",
    "tune_study",
    "tuning_setup",
]
