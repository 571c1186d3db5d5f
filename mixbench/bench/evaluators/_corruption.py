"""Accuracy under corruptions, for the official sets and for the generated one alike.

A corruption source has ``corruptions``, ``severities``, ``official``, ``num_examples(corruption,
severity)`` and ``batches(corruption, severity, indices, batch_size)`` yielding uint8 image
batches with their labels: :class:`CorruptionSet` (official files) and
:class:`GeneratedCorruptionSet` (clean images corrupted on the fly) are the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mixbench.bench.evaluators._attacks import robust_accuracy
from mixbench.bench.evaluators._generated import SEVERITIES, apply_corruption, generated_corruptions
from mixbench.errors import UsageError
from mixbench.seeding import purpose_seed


class CorruptionSource(Protocol):
    """What :func:`corruption_accuracy` needs from a corruption set."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    official: bool

    def num_examples(self, corruption: str, severity: int) -> int: ...

    def batches(
        self,
        corruption: str,
        severity: int,
        indices: torch.Tensor | None = None,
        batch_size: int = 256,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True, eq=False)
class GeneratedCorruptionSet:
    """Clean test images corrupted on the fly by the generated corruptions (not the official set).

    The noise of each (corruption, severity) pair comes from its own generator, seeded from
    ``seed`` and the pair's name, so the corrupted images do not depend on the order in which the
    pairs are evaluated; for a given ``seed`` and batch size they are always the same.

    Attributes:
        images: (N, C, H, W) uint8 clean images (or float in [0, 1]).
        labels: (N,) integer labels.
        seed: seeds the noises (use the cell's seed).
        corruptions: which generated corruptions to use (default all).
    """

    images: torch.Tensor
    labels: torch.Tensor
    seed: int = 0
    corruptions: tuple[str, ...] = tuple(generated_corruptions())
    severities: tuple[int, ...] = SEVERITIES
    official: bool = False
    name: str = "generated"

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        unknown = sorted(set(self.corruptions) - set(generated_corruptions()))
        if unknown:
            raise UsageError(
                f"unknown generated corruptions {unknown}; "
                f"valid: {', '.join(generated_corruptions())}"
            )

    def num_examples(self, corruption: str, severity: int) -> int:
        """The number of clean images (the same for every corruption and severity)."""
        return int(self.images.shape[0])

    def generator(self, corruption: str, severity: int) -> torch.Generator:
        """The generator of one (corruption, severity) pair, on the CPU."""
        return torch.Generator().manual_seed(purpose_seed(self.seed, f"{corruption}/{severity}"))

    def batches(
        self,
        corruption: str,
        severity: int,
        indices: torch.Tensor | None = None,
        batch_size: int = 256,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Corrupted ``(images, labels)`` batches of the selected clean images."""
        chosen = torch.arange(self.images.shape[0]) if indices is None else indices.cpu()
        generator = self.generator(corruption, severity)
        for start in range(0, chosen.numel(), batch_size):
            idx = chosen[start : start + batch_size].to(self.images.device)
            clean = self.images[idx]
            yield apply_corruption(corruption, clean, severity, generator), self.labels[idx]


def corruption_accuracy(
    model: nn.Module,
    source: CorruptionSource,
    *,
    limit: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy of ``model`` on every corruption and severity of ``source``.

    Args:
        model: maps [0, 1] images to logits (see :class:`NormalizedModel`).
        source: a :class:`CorruptionSet` or :class:`GeneratedCorruptionSet`.
        limit: evaluate a fixed random subset of at most this many examples per corruption and
            severity; the same positions are used for every pair of the same size.
        generator: draws that subset (``None``: a generator seeded with 0).
        batch_size, device, amp_dtype: as for :func:`robust_accuracy`.

    Returns:
        ``{"mean": mean accuracy over corruptions and severities, "per_corruption": {name:
        mean over severities}, "per_severity": {name: [accuracy at each severity]},
        "severities": [1..5], "examples": examples per pair (the largest), "official": bool}``.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"the corruption evaluation limit must be >= 1, got {limit}")
    if not source.corruptions:
        raise UsageError("the corruption set has no corruptions to evaluate")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    subset_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    per_severity: dict[str, list[float]] = {}
    examples = 0
    for corruption in source.corruptions:
        accuracies = []
        for severity in source.severities:
            n = source.num_examples(corruption, severity)
            indices = None
            if limit is not None and limit < n:
                g = torch.Generator().manual_seed(subset_seed)
                indices = torch.randperm(n, generator=g)[:limit].sort().values
            result = robust_accuracy(
                model,
                source.batches(corruption, severity, indices, batch_size),
                None,
                device=device,
                amp_dtype=amp_dtype,
            )
            accuracies.append(float(result["accuracy"]))
            examples = max(examples, int(result["count"]))
        per_severity[corruption] = accuracies
    per_corruption = {c: sum(a) / len(a) for c, a in per_severity.items()}
    return {
        "mean": sum(per_corruption.values()) / len(per_corruption),
        "per_corruption": per_corruption,
        "per_severity": per_severity,
        "severities": list(source.severities),
        "examples": examples,
        "official": bool(source.official),
    }
