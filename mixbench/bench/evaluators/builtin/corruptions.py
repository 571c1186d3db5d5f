"""``generated_corruptions`` and ``official_corruptions``: top-1 on corrupted test images.

- ``generated_corruptions``: mixbench's own corruptions made with tensor operations (no
  download; not the official benchmark) on ``eval.corruption_subset`` test images; the mean top-1
  over corruptions and severities, per-corruption and per-severity numbers kept.
- ``official_corruptions``: CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C found under
  the data root (or beside it), ``eval.official_subset`` images per corruption and severity;
  skipped with a note when absent, never faked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mixbench.bench.evaluators._corruption import GeneratedCorruptionSet, corruption_accuracy
from mixbench.bench.evaluators._official import find_corruption_set
from mixbench.bench.evaluators.base import (
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    examples_text,
    register_evaluator,
)

__all__ = ["GeneratedCorruptions", "OfficialCorruptions", "corruption_suite", "official_source"]


def corruption_suite(
    context: EvalContext, source: Any, *, limit: int | None, purpose: str
) -> dict[str, Any]:
    """:func:`corruption_accuracy` one corruption at a time (heartbeats between them).

    Every corruption's subset is drawn from a fresh generator of the same seed, so the positions
    (and the numbers) are those of one call over the whole set.
    """
    parts = []
    for corruption in source.corruptions:
        single = dataclasses.replace(source, corruptions=(corruption,))
        parts.append(
            corruption_accuracy(
                context.model,
                single,
                limit=limit,
                generator=context.generator(purpose),
                batch_size=context.cell.eval.batch_size,
                device=context.device,
                amp_dtype=context.amp_dtype,
            )
        )
        context.beat()
    per_corruption = {k: v for p in parts for k, v in p["per_corruption"].items()}
    return {
        "mean": sum(per_corruption.values()) / len(per_corruption),
        "per_corruption": per_corruption,
        "per_severity": {k: v for p in parts for k, v in p["per_severity"].items()},
        "severities": list(source.severities),
        "examples": max(p["examples"] for p in parts),
        "official": bool(source.official),
    }


def official_source(bundle: Any, cell: Any, info: Any = None) -> tuple[Any | None, str]:
    """The official corruption set of the cell's data set, or ``(None, why it is skipped)``.

    The benchmark is the data set's (``info.corruption_benchmark``, by default from the
    registered info of ``cell.dataset``); ``eval.corruption_benchmark`` names one where the
    data set has none (e.g. ``"CIFAR-10-C"`` for CIFAR-10 stored as an image folder). It is
    looked for under the data root and, for a data root that is the data set's own folder (the
    ``imagefolder`` layout), beside it.
    """
    config = cell.eval
    if info is None:
        from mixbench.datasets import DATASETS, dataset_info

        info = dataset_info(cell.dataset) if cell.dataset in DATASETS else None
    own = info.corruption_benchmark if info is not None else None
    benchmark = config.corruption_benchmark or own or cell.dataset
    root = cell.runtime.data_root
    roots = [None] if root is None else [Path(root).expanduser()]
    if root is not None:
        roots.append(roots[0].resolve().parent)
    class_to_idx = {name: i for i, name in enumerate(bundle.class_names)}
    reason = ""
    for candidate in roots:
        found, why = find_corruption_set(candidate, benchmark, class_to_idx=class_to_idx)
        if found is not None:
            break
        reason = reason or why
    else:
        if "no official corruption benchmark is known" in reason:
            reason += " (set eval.corruption_benchmark, e.g. CIFAR-10-C, to name one)"
        return None, reason
    severities = tuple(s for s in found.severities if s in config.corruption_severities)
    found = dataclasses.replace(found, severities=severities)
    # A benchmark of another image size or more classes would give meaningless numbers.
    first = next(found.batches(found.corruptions[0], severities[0], torch.arange(1), 1))
    size = tuple(first[0].shape[-2:])
    if size != tuple(bundle.image_size):
        return None, (
            f"{found.name} at {found.path} holds {size[0]}x{size[1]} images but data set "
            f"{bundle.name!r} has {bundle.image_size[0]}x{bundle.image_size[1]}"
        )
    if found.layout == "npy":
        from mixbench.bench.evaluators._official import cifar_c_labels

        n = found.num_examples(found.corruptions[0], severities[0]) * 5
        top = int(cifar_c_labels(found.path, n).max())
        if top >= bundle.num_classes:
            return None, (
                f"{found.name} at {found.path} has label {top} but data set {bundle.name!r} "
                f"has {bundle.num_classes} classes"
            )
    return found, ""


def _severities(values: Any) -> str:
    values = sorted(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}–{values[-1]}"
    return ", ".join(str(v) for v in values)


@register_evaluator("generated_corruptions")
class GeneratedCorruptions(Evaluator):
    """Mean top-1 over mixbench's generated corruptions (tensor operations, no download)."""

    description = "top-1 under mixbench's generated corruptions (not the official benchmark)"
    order = 40
    columns = (
        ColumnSpec(key="corruption_generated_top1", header="corr. generated (%)",
                   optional=False, position=41, plot="generated corruptions top-1 (%)"),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        config = context.cell.eval
        images, labels = context.subset(config.corruption_subset, "corruptions")
        source = GeneratedCorruptionSet(
            images,
            labels,
            seed=context.seed,
            corruptions=tuple(config.generated_corruptions),
            severities=tuple(config.corruption_severities),
        )
        result = corruption_suite(context, source, limit=None, purpose="generated")
        return EvalResult(
            metrics={"corruption_generated_top1": result["mean"], "corruption_generated": result},
            settings={
                "corruptions": list(source.corruptions),
                "severities": list(source.severities),
                "examples": int(images.shape[0]),
            },
        )

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        texts = dict.fromkeys(
            f"{', '.join(s['corruptions'])} at severities {_severities(s['severities'])} on "
            f"{examples_text(s['examples'])}"
            for s in settings
        )
        if not texts:
            return ""
        return (
            "corr. generated: mean top-1 over mixbench's *generated* corruptions (made with "
            f"tensor operations, no download; not the official benchmark): {' / '.join(texts)}."
        )


@register_evaluator("official_corruptions")
class OfficialCorruptions(Evaluator):
    """Mean top-1 over the official corruption benchmark's files, when they are found."""

    description = "top-1 on CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C if found"
    order = 50
    note_key = "corruption_official_note"
    columns = (
        ColumnSpec(key="corruption_official_top1", header="corr. official (%)",
                   optional=False, position=40, plot="official corruptions top-1 (%)"),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        found, note = official_source(context.bundle, context.cell, context.info)
        if found is None:
            return EvalResult(
                metrics={},
                settings={"skipped": note},
                notes=[f"official corruptions skipped: {note}"],
            )
        result = corruption_suite(
            context, found, limit=context.cell.eval.official_subset, purpose="official"
        )
        result["benchmark"] = found.name
        result["missing"] = list(found.missing)
        return EvalResult(
            metrics={"corruption_official_top1": result["mean"], "corruption_official": result},
            settings={
                "benchmark": found.name,
                "corruptions": list(found.corruptions),
                "missing": list(found.missing),
                "severities": list(found.severities),
                "examples": result["examples"],
            },
        )

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        texts = []
        for s in settings:
            if "benchmark" not in s:
                continue
            missing = s.get("missing") or []
            missing_text = f" (missing from the files: {', '.join(missing)})" if missing else ""
            texts.append(
                f"{s['benchmark']}, {len(s['corruptions'])} corruptions{missing_text} at "
                f"severities {_severities(s['severities'])}, "
                f"{int(s['examples']):,} images per corruption and severity"
            )
        if not texts:
            return ""
        return (
            "corr. official: mean top-1 over the official corruption benchmark "
            f"(Hendrycks & Dietterich, arXiv 1903.12261): {' / '.join(dict.fromkeys(texts))}."
        )
