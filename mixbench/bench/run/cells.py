"""The cells of a benchmark matrix: names resolved against the registries, parameters validated.

A :class:`~mixbench.config.MatrixConfig` is plain data; :func:`build_cells` expands it into
:class:`~mixbench.config.CellConfig` objects (method x data set x model x seed), resolving
method patterns and parameter sets against the method registry and the evaluator selection
(patterns such as ``"*"``, and the ``eval.options`` tables) against the evaluator registry
(:func:`resolve_eval`). A cell records the resolved evaluator list, so its key does not
depend on which evaluators a later version registers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from mixbench.config import CellConfig, EvalConfig, MatrixConfig
from mixbench.errors import UnknownNameError, UsageError

#: ``best(method_cls, matrix, dataset, model) -> (params, label)``: the parameter set ``best``
#: of one method on one data set and model, and the label recorded in the cell.
BestParams = Callable[[type, MatrixConfig, str, str], tuple[dict[str, Any], str]]


# -- evaluators ---------------------------------------------------------------------------


def resolve_eval(config: EvalConfig) -> EvalConfig:
    """A copy of ``config`` checked against the evaluator registry.

    Patterns in ``evaluators`` are expanded to the registered evaluators they match (in run
    order; an unknown name is a one-line error naming the valid ones), the ``options`` tables
    of the evaluators that run are checked against their settings and those of registered
    evaluators that do not run are dropped (they would change nothing), and corruption names
    that a plug-in registers are checked against the registry.
    """
    out = copy.deepcopy(config)
    out.evaluators = _resolve_evaluators(out.evaluators)
    out.options = _check_evaluator_options(out.options, out.evaluators)
    if not out.generated_corruptions and "generated_corruptions" in out.evaluators:
        raise UsageError("eval.generated_corruptions is empty; list some or drop the evaluator")
    extra = [c for c in out.generated_corruptions if c not in EvalConfig.GENERATED]
    if extra:  # perhaps registered by a plugin: ask the registry
        from mixbench.bench.evaluators import generated_corruptions

        valid = generated_corruptions()
        if any(c not in valid for c in extra):
            raise UsageError(
                f"unknown generated corruption {extra[0]!r} in eval.generated_corruptions; "
                f"valid: {', '.join(valid)}"
            )
    return out


def resolve_cell(cell: CellConfig) -> CellConfig:
    """``cell`` with its ``eval`` section checked by :func:`resolve_eval` (e.g. a cell read
    back from a file)."""
    return dataclasses.replace(cell, eval=resolve_eval(cell.eval))


def _resolve_evaluators(names: list[str]) -> list[str]:
    """``names`` with patterns expanded to the registered evaluators they match (in run order);
    an unknown name is a one-line error naming the valid ones."""
    from mixbench.bench.evaluators import EVALUATORS, list_evaluators

    out: list[str] = []
    for entry in names:
        if any(c in entry for c in "*?["):
            found = list_evaluators(entry)
            if not found:
                raise UsageError(
                    f"eval.evaluators: {entry!r} matches no evaluator; valid evaluators: "
                    f"{', '.join(list_evaluators())}"
                )
        else:
            try:
                EVALUATORS.get(entry)
            except UnknownNameError as exc:
                raise UsageError(f"{exc} (in eval.evaluators)") from None
            found = [entry]
        out += [name for name in found if name not in out]
    return out


def _check_evaluator_options(
    options: dict[str, dict[str, Any]], evaluators: list[str]
) -> dict[str, dict[str, Any]]:
    """The ``eval.options`` tables of the evaluators that run, each checked against its
    evaluator's settings; tables of registered evaluators that do not run are dropped, a table
    naming no evaluator is an error."""
    from mixbench.bench.evaluators import EVALUATORS
    from mixbench.bench.evaluators.base import resolve_settings

    kept = {}
    for name, values in options.items():
        if name not in EVALUATORS:
            EVALUATORS.get(name)  # the one-line error with close matches
        if not isinstance(values, dict):
            raise UsageError(f"eval.options.{name} must be a table, got {values!r}")
        if name in evaluators:
            resolve_settings(name, values)
            kept[name] = values
    return kept


# -- methods ------------------------------------------------------------------------------


def resolved_methods(matrix: MatrixConfig) -> list[str]:
    """The matrix's method names with patterns (``"*"``) expanded to the registered methods."""
    from mixbench.methods import list_methods

    names: list[str] = []
    for entry in matrix.methods:
        found = list_methods(entry) if any(c in entry for c in "*?[") else [entry]
        if not found:
            from mixbench.plugins import HOW_TO_LOAD

            raise UsageError(
                f"no registered method matches the pattern {entry!r}; registered methods: "
                f"{', '.join(list_methods())}; {HOW_TO_LOAD}"
            )
        names.extend(n for n in found if n not in names)
    return names


def matrix_entries(
    matrix: MatrixConfig,
) -> list[tuple[str, dict[str, Any], list[int], str | None, int]]:
    """(method, variant parameters, seeds, variant parameter set, epochs scale) of every
    matrix row.

    Without ``variants`` every selected method is one row with the matrix's seeds. With
    ``variants`` (a list of tables: ``method``, optional ``param_set`` (a named parameter set
    of the method, e.g. ``"ce"``), ``params`` (applied on top), ``seeds`` and
    ``epochs_scale`` (an integer >= 1: train for that many times the schedule's epochs, as a
    row of the same table, e.g. ERM given the network passes of a method that runs the
    network twice per step)) each variant is a row; ``methods`` then filters them (``["*"]``
    keeps all).
    """
    if not matrix.variants:
        return [(m, {}, list(matrix.seeds), None, 1) for m in resolved_methods(matrix)]
    keep = None if matrix.methods == ["*"] else set(resolved_methods(matrix))
    rows = []
    for i, variant in enumerate(matrix.variants):
        allowed = {"method", "param_set", "params", "seeds", "epochs_scale"}
        unknown = sorted(set(variant) - allowed)
        if unknown or "method" not in variant:
            raise UsageError(
                f"variant {i + 1} of preset {matrix.name!r} needs a 'method' and may have "
                f"'param_set', 'params', 'seeds' and 'epochs_scale'; got keys {sorted(variant)}"
            )
        if keep is not None and variant["method"] not in keep:
            continue
        seeds = variant.get("seeds", matrix.seeds)
        if not isinstance(seeds, list) or not all(isinstance(x, int) for x in seeds):
            raise UsageError(f"variant {i + 1} of preset {matrix.name!r}: seeds must be a list")
        named = variant.get("param_set")
        if named is not None and not isinstance(named, str):
            raise UsageError(f"variant {i + 1} of preset {matrix.name!r}: param_set must be a name")
        scale = variant.get("epochs_scale", 1)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 100:
            raise UsageError(
                f"variant {i + 1} of preset {matrix.name!r}: epochs_scale must be an integer "
                f"from 1 to 100 (times the schedule's epochs), got {scale!r}"
            )
        rows.append((variant["method"], dict(variant.get("params", {})), seeds, named, scale))
    return rows


def _named_param_set(cls: type, name: str) -> tuple[dict[str, Any], str]:
    """A method's named parameter set (e.g. ``ce``) and the name recorded in the cell."""
    sets = getattr(cls, "param_sets", {}) or {}
    if name == "default":
        return {}, "default"
    if name not in sets:
        valid = ", ".join(["default", *sorted(sets)])
        raise UsageError(f"method {cls.name!r} has no parameter set {name!r}; its sets: {valid}")
    return dict(sets[name]), name


#: The error of the parameter set ``best`` without a tuning storage to read it from.
NO_TUNING_STORAGE = (
    "the parameter set 'best' needs a tuning storage: pass --param-set best "
    "(default storage OUT/tuning.db) or --tuning-storage URL"
)


def _no_storage(cls: type, matrix: MatrixConfig, dataset: str, model: str) -> Any:
    """The parameter set ``best`` without a tuning storage: the error saying how to give one."""
    raise UsageError(NO_TUNING_STORAGE)


def _method_param_set(
    cls: type, matrix: MatrixConfig, dataset: str, model: str, best: BestParams | None
) -> tuple[dict[str, Any], str]:
    """The parameters of the matrix's param set for one method, data set and model, and the
    param set recorded in the cell.

    ``default``: none (the declared defaults), recorded as ``default``. A named set such as
    ``paper``: the method's ``param_sets[name]``; a method that declares no such set runs (and
    records) its defaults, so its cells are shared with a ``default`` run. ``best``: what
    ``best`` returns (the command line reads the best trial of the method's tuning study,
    recorded as ``best:<study name>``).
    """
    name = matrix.param_set
    if name == "best":
        return (best or _no_storage)(cls, matrix, dataset, model)
    if name == "default":
        return {}, name
    sets = getattr(cls, "param_sets", {}) or {}
    if name not in sets:  # e.g. ERM under ``--param-set paper``: its cells are the default ones
        return {}, "default"
    return dict(sets[name]), name


# -- cells --------------------------------------------------------------------------------


def key_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls``'s parameters declared ``Param(key_default=True)``: a cell
    leaves each of them out of its key while it holds that value (``CellConfig.key_defaults``),
    so that an option added to a method keeps the keys of its stored cells."""
    params = getattr(cls, "params", {}) or {}
    return {k: p.default for k, p in params.items() if getattr(p, "key_default", False)}


def _check_dataset_options(matrix: MatrixConfig) -> None:
    """Each data set's options: names and types (the factory's annotations), nothing loaded."""
    from mixbench.datasets.base import check_dataset_options

    for name in matrix.datasets:
        check_dataset_options(name, matrix.dataset_options.get(name, {}))


def check_batch_fits(matrix: MatrixConfig) -> None:
    """Refuse a ``schedule.batch_size`` larger than the training set of a data set of
    ``matrix`` (its declared size: ``train_subset``, ``n_train`` or :class:`DatasetInfo`;
    nothing loaded): training drops the last partial batch, so such a cell has nothing to
    train on. The command line checks every matrix it reads; cells built only to be
    evaluated need not pass."""
    from mixbench.datasets.base import declared_train_size

    batch = matrix.schedule.batch_size
    for name in matrix.datasets:
        size = declared_train_size(name, matrix.dataset_options.get(name, {}))
        if size is not None and batch > size:
            raise UsageError(
                f"schedule.batch_size {batch} is larger than the {size} training images of "
                f"data set {name!r}: no full batch to train on; lower schedule.batch_size"
            )


def build_cells(matrix: MatrixConfig, *, best: BestParams | None = None) -> list[CellConfig]:
    """Every cell of ``matrix``, names and parameters validated, in a stable order.

    ``best`` gives the parameters of the parameter set ``best``
    (``best(method_cls, matrix, dataset, model) -> (params, label)``); it is needed only when
    ``matrix.param_set`` is ``best``. Variants that resolve to the same parameters are one cell.
    """
    from mixbench.methods import get_method_class, resolve_params

    matrix.validate()
    _check_dataset_options(matrix)
    if not matrix.seeds:
        raise UsageError("the matrix has no seeds; pass --seeds 0,1,2")
    evaluation = resolve_eval(matrix.eval)
    out: list[CellConfig] = []
    for dataset in matrix.datasets:
        for model in matrix.models:
            for method, variant_params, seeds, variant_set, scale in matrix_entries(matrix):
                cls = get_method_class(method)
                if variant_set is not None:
                    preset_params, param_set = _named_param_set(cls, variant_set)
                else:
                    preset_params, param_set = _method_param_set(cls, matrix, dataset, model, best)
                given = dict(preset_params)
                given.update(matrix.method_params.get(method, {}))
                given.update(variant_params)
                params = resolve_params(cls, given)
                neutral = key_defaults(cls)
                for seed in seeds:
                    out.append(
                        CellConfig(
                            preset=matrix.name,
                            method=method,
                            params=params,
                            dataset=dataset,
                            dataset_options=dict(matrix.dataset_options.get(dataset, {})),
                            model=model,
                            model_options=dict(matrix.model_options.get(model, {})),
                            seed=int(seed),
                            schedule=copy.deepcopy(matrix.schedule),
                            eval=copy.deepcopy(evaluation),
                            runtime=copy.deepcopy(matrix.runtime),
                            param_set=param_set,
                            method_version=int(getattr(cls, "version", 1)),
                            key_defaults=dict(neutral),
                            epochs_scale=scale,
                        )
                    )
    if not out:
        raise UsageError("the matrix is empty: no methods, data sets or models selected")
    unique: dict[str, CellConfig] = {}
    for cell in out:
        unique.setdefault(cell.key, cell)
    return list(unique.values())


def split_unsupported(
    cells: list[CellConfig],
) -> tuple[list[CellConfig], list[tuple[CellConfig, str]]]:
    """``cells`` split into those whose method supports the model and the others, each with
    the reason its method's :meth:`~mixbench.methods.MixMethod.supports` gives (the models are
    built once per name and options, on the meta device: no memory, no weights)."""
    import torch

    from mixbench.methods import get_method
    from mixbench.models import create_model

    models: dict[str, Any] = {}
    kept: list[CellConfig] = []
    refused: list[tuple[CellConfig, str]] = []
    for cell in cells:
        options = json.dumps(cell.model_options, sort_keys=True, default=str)
        key = f"{cell.model} {options}"
        if key not in models:
            with torch.device("meta"):
                models[key] = create_model(cell.model, 10, **cell.model_options)
        reason = get_method(cell.method, **cell.params).supports(models[key])
        if reason is None:
            kept.append(cell)
        else:
            refused.append((cell, reason))
    return kept, refused


def drop_unsupported(cells: list[CellConfig]) -> tuple[list[CellConfig], list[str]]:
    """``cells`` without those whose method refuses the model (:func:`split_unsupported`), and
    one note per method, model and reason."""
    kept, refused = split_unsupported(cells)
    notes: list[str] = []
    for cell, reason in refused:
        note = f"mixbench: note: skipping method {cell.method!r} on model {cell.model!r}: {reason}"
        if note not in notes:
            notes.append(note)
    return kept, notes
