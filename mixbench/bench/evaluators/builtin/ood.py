"""``ood``: out-of-distribution detection from the classifier's own scores.

Every test image and every image of each out-of-distribution (OOD) set gets a score, higher
meaning "more in-distribution": the maximum softmax probability (MSP) and the negative energy
(``T * logsumexp(logits / T)``). How well the scores separate the test set from each OOD set is
measured by AUROC, AUPR (the test images as the positive class) and FPR95 (the fraction of OOD
images scored at or above the threshold that keeps 95 % of the test images), per set and as the
mean over the sets. The OOD sets:

- image folders the user names, ``sets = ["DIR", ...]`` (e.g. SVHN's or LSUN's test images
  stored as image files), resized to the data set's image size;
- generated sets that need no download (``generated``): uniform noise, Gaussian noise, and
  mixbench's ``synthetic`` images (skipped when the data set is itself ``synthetic``). They are
  far from natural images and are labelled as generated, never as a named benchmark.

Settings (``[eval.options.ood]``): ``sets``, ``generated``, ``in_subset`` (test images scored),
``out_subset`` (images per OOD set), ``temperature`` (of the energy score).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mixbench.bench.evaluators._ood as ood
from mixbench.bench.evaluators.base import (
    ColumnSpec,
    EvalContext,
    EvalResult,
    Evaluator,
    register_evaluator,
)
from mixbench.bench.evaluators.data import as_unit
from mixbench.errors import UsageError

__all__ = ["OOD", "OODSettings"]


@dataclass
class OODSettings:
    """Settings of the ``ood`` evaluator (``[eval.options.ood]``).

    Attributes:
        sets: folders of OOD images (any image files, searched recursively).
        generated: generated OOD sets, from ``uniform_noise``, ``gaussian_noise``, ``synthetic``.
        in_subset: test images scored (``None``: all), drawn with the cell's seed.
        out_subset: images per OOD set (``None``: all of a folder; generated sets need a size).
        temperature: the energy score's temperature.
    """

    sets: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=lambda: list(ood.GENERATED_OOD_SETS))
    in_subset: int | None = 1000
    out_subset: int | None = 1000
    temperature: float = 1.0

    def __post_init__(self) -> None:
        unknown = [g for g in self.generated if g not in ood.GENERATED_OOD_SETS]
        if unknown:
            raise UsageError(
                f"eval.options.ood.generated: unknown set {unknown[0]!r}; valid: "
                f"{', '.join(ood.GENERATED_OOD_SETS)}"
            )
        for name in ("in_subset", "out_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"eval.options.ood.{name} must be >= 1, got {value}")
        if self.generated and self.out_subset is None:
            raise UsageError(
                "eval.options.ood.out_subset must be a number when generated sets are used"
            )
        if self.temperature <= 0:
            raise UsageError(f"eval.options.ood.temperature must be > 0, got {self.temperature}")
        if not self.sets and not self.generated:
            raise UsageError("eval.options.ood: no OOD set; name folders in sets or keep generated")


def _logits(context: EvalContext, images: torch.Tensor) -> torch.Tensor:
    """float32 logits on the CPU of uint8 (or [0, 1]) ``images``, in batches."""
    out = []
    batch_size = context.cell.eval.batch_size
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = as_unit(images[start : start + batch_size].to(context.device))
            with context.autocast():
                out.append(context.model(x).float().cpu())
    return torch.cat(out)


def _match_channels(images: torch.Tensor, channels: int, where: str) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 1:  # a grey-level data set: the mean of the colour channels
        return images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    raise UsageError(f"{where}: images with {images.shape[1]} channels, the data has {channels}")


_LABELS = {
    "uniform_noise": "uniform noise (generated)",
    "gaussian_noise": "Gaussian noise (generated)",
    "synthetic": "mixbench synthetic images (generated)",
}


@register_evaluator("ood")
class OOD(Evaluator):
    """Out-of-distribution detection: MSP and energy scores, AUROC / AUPR / FPR95."""

    description = "OOD detection (MSP, energy): AUROC, AUPR, FPR95 against generated or given sets"
    settings = OODSettings
    order = 70
    columns = (
        ColumnSpec(key="ood_auroc", header="OOD AUROC (%)", position=60,
                   plot="OOD AUROC, MSP (%)",
                   legend="OOD AUROC / AUPR / FPR95: out-of-distribution detection by the "
                   "maximum softmax probability, the mean over the OOD sets of the area under "
                   "the ROC curve (ties count one half), the average precision with the test "
                   "images as positives, and the fraction of OOD images scored at or above the "
                   "threshold that keeps 95 % of the test images (lower is better)."),
        ColumnSpec(key="ood_aupr", header="OOD AUPR (%)", position=61),
        ColumnSpec(key="ood_fpr95", header="OOD FPR95 (%)", higher_is_better=False,
                   position=62),
        ColumnSpec(key="ood_energy_auroc", header="OOD AUROC energy (%)", position=63,
                   legend="OOD AUROC energy: the same AUROC with the negative free energy "
                   "(T logsumexp(logits / T)) as the score."),
    )  # fmt: skip

    def run(self, context: EvalContext) -> EvalResult:
        settings: OODSettings = context.settings or OODSettings()
        images, _ = context.subset(settings.in_subset, "ood")
        channels = int(images.shape[1])
        size = tuple(context.bundle.image_size)
        logits_in = _logits(context, images)
        score_in = {
            "msp": ood.msp_scores(logits_in),
            "energy": ood.energy_scores(logits_in, settings.temperature),
        }
        sets: dict[str, torch.Tensor] = {}
        notes = []
        for kind in settings.generated:
            if kind == "synthetic" and context.cell.dataset == "synthetic":
                notes.append(
                    "ood: the generated synthetic set is skipped: the data set is synthetic"
                )
                continue
            sets[_LABELS[kind]] = ood.generated_ood_images(
                kind, settings.out_subset, size, channels, context.generator(f"ood-{kind}")
            )
        for folder in settings.sets:
            name = Path(folder).expanduser().name or str(folder)
            loaded = ood.load_ood_folder(
                Path(folder).expanduser(), size, settings.out_subset, context.generator("ood-dir")
            )
            sets[name] = _match_channels(loaded, channels, f"eval.options.ood.sets: {folder}")
        if not sets:
            return EvalResult(metrics={}, notes=notes or ["ood: no OOD set to compare with"])
        per_set: dict[str, Any] = {}
        for name, ood_images in sets.items():
            logits_out = _logits(context, ood_images)
            per_set[name] = {
                "msp": ood.ood_metrics(score_in["msp"], ood.msp_scores(logits_out)),
                "energy": ood.ood_metrics(
                    score_in["energy"], ood.energy_scores(logits_out, settings.temperature)
                ),
                "examples": int(ood_images.shape[0]),
            }
            context.beat()

        def mean(score: str, metric: str) -> float:
            return statistics.fmean(s[score][metric] for s in per_set.values())

        metrics = {
            "ood_auroc": mean("msp", "auroc"),
            "ood_aupr": mean("msp", "aupr"),
            "ood_fpr95": mean("msp", "fpr95"),
            "ood_energy_auroc": mean("energy", "auroc"),
            "ood_energy_aupr": mean("energy", "aupr"),
            "ood_energy_fpr95": mean("energy", "fpr95"),
            "ood": {"sets": per_set, "in_examples": int(images.shape[0])},
        }
        return EvalResult(
            metrics=metrics,
            settings={
                "sets": list(per_set),
                "in_examples": int(images.shape[0]),
                "out_examples": {name: s["examples"] for name, s in per_set.items()},
                "temperature": settings.temperature,
            },
            notes=notes,
        )

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        text = super().legend(settings, shown, table_eval)
        if not text:
            return ""
        described = dict.fromkeys(
            f"{int(s['in_examples']):,} test images against "
            + ", ".join(f"{name} ({s['out_examples'][name]:,})" for name in s["sets"])
            for s in settings
            if s.get("sets")
        )
        if described:
            text += f" Sets: {' / '.join(described)}."
        if any("(generated)" in name for s in settings for name in s.get("sets", [])):
            text += (
                " Generated sets need no download and lie far from natural images: an easy "
                "check, not a named OOD benchmark."
            )
        return text
