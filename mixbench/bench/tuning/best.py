"""``--param-set best``: each method's parameters from the best trial of its tuning study.

The command line resolves the set into explicit method parameters before any cell is built
(:func:`best_params_from` is the hook :func:`mixbench.bench.run.cells.build_cells` takes), and
the cell records the study in its ``param_set`` (``best:<study name>``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage

from mixbench.bench.run.cells import NO_TUNING_STORAGE
from mixbench.bench.run.store import redact_url
from mixbench.bench.tuning.space import search_space
from mixbench.bench.tuning.storage import open_storage, study_name
from mixbench.bench.tuning.study import best_trial, format_params
from mixbench.config import MatrixConfig
from mixbench.errors import UsageError
from mixbench.methods import MixMethod

BEST_PREFIX = "best:"  # a cell's param_set when its parameters come from a study

__all__ = ["BEST_PREFIX", "best_param_set", "best_params_from", "find_study"]


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
    :func:`mixbench.bench.run.cells.build_cells` takes it: ``best(method_cls, matrix, dataset,
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
            f"param set best: no study of {method} on {where} in {redact_url(storage_url)}: "
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
        f"(val top-1 {100 * best.value:.2f}%): {format_params(best.params)}",
        file=log,
    )
    return params, BEST_PREFIX + name
