"""Evaluators run on every finished cell, the same code for every method.

The interface (:mod:`mixbench.bench.evaluators.base`): :class:`Evaluator` (a registered class
with a ``name``, optional ``settings`` dataclass, ``columns`` and ``run(context)``),
:class:`EvalResult`, :class:`ColumnSpec`, :class:`EvalContext`, :func:`register_evaluator`,
:func:`list_evaluators`; mixbench's own evaluators are the modules of
:mod:`mixbench.bench.evaluators.builtin`. The arithmetic they use:

- Calibration: :func:`calibration_errors` (ECE, MCE, OE) from per-bin statistics, and the ignite
  metric :class:`CalibrationError` that sums those statistics across processes.
- Adversarial robustness in pixel space: :func:`fgsm`, :func:`pgd`, :func:`robust_accuracy`,
  :class:`NormalizedModel`, :func:`default_attack_settings`.
- Corruption robustness: the official CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C
  files (:func:`find_corruption_set`) and a generated set that needs no download
  (:func:`generated_corruptions`, :func:`apply_corruption`), both measured by
  :func:`corruption_accuracy`.
- Embedding quality: :func:`alignment` and :func:`uniformity`.
- Out-of-distribution detection: :func:`ood_metrics` (AUROC, AUPR, FPR95) of scores such as
  :func:`msp_scores` and :func:`energy_scores`, on folders (:func:`load_ood_folder`) or
  generated sets (:func:`generated_ood_images`).
"""

from mixbench.bench.evaluators import builtin as _builtin  # noqa: F401  (registers them)
from mixbench.bench.evaluators._attacks import (
    Attack,
    NormalizedModel,
    default_attack_settings,
    fgsm,
    pgd,
    robust_accuracy,
)
from mixbench.bench.evaluators._calibration import (
    calibration_bin_stats,
    calibration_errors,
    calibration_errors_from_stats,
    merge_bin_stats,
    reliability_diagram_data,
)
from mixbench.bench.evaluators._corruption import (
    CorruptionSource,
    GeneratedCorruptionSet,
    corruption_accuracy,
)
from mixbench.bench.evaluators._embedding import alignment, embedding_quality, uniformity
from mixbench.bench.evaluators._generated import apply_corruption, generated_corruptions
from mixbench.bench.evaluators._metric import CalibrationError
from mixbench.bench.evaluators._official import (
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    CorruptionSet,
    find_corruption_set,
    list_folder_images,
    load_cifar_c,
)
from mixbench.bench.evaluators._ood import (
    GENERATED_OOD_SETS,
    energy_scores,
    generated_ood_images,
    load_ood_folder,
    msp_scores,
    ood_metrics,
)
from mixbench.bench.evaluators.base import (
    EVALUATORS,
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    evaluator_columns,
    evaluator_generator,
    evaluator_info,
    get_evaluator,
    list_evaluators,
    register_evaluator,
)
from mixbench.bench.evaluators.data import draw_subset, take_examples

__all__ = [
    "GENERATED_OOD_SETS",
    "energy_scores",
    "generated_ood_images",
    "load_ood_folder",
    "msp_scores",
    "ood_metrics",
    "EVALUATORS",
    "ColumnSpec",
    "EvalContext",
    "EvalResult",
    "Evaluator",
    "draw_subset",
    "evaluator_columns",
    "evaluator_generator",
    "evaluator_info",
    "get_evaluator",
    "list_evaluators",
    "register_evaluator",
    "take_examples",
    "BENCHMARK_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "Attack",
    "CalibrationError",
    "CorruptionSet",
    "CorruptionSource",
    "GeneratedCorruptionSet",
    "NormalizedModel",
    "alignment",
    "apply_corruption",
    "calibration_bin_stats",
    "calibration_errors",
    "calibration_errors_from_stats",
    "corruption_accuracy",
    "default_attack_settings",
    "embedding_quality",
    "fgsm",
    "find_corruption_set",
    "generated_corruptions",
    "list_folder_images",
    "load_cifar_c",
    "merge_bin_stats",
    "pgd",
    "reliability_diagram_data",
    "robust_accuracy",
    "uniformity",
]
