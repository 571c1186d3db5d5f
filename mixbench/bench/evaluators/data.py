"""Test examples for the evaluators: seeded subsets of a split, as uint8 tensors on the CPU."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from mixbench.datasets.base import Split, TensorImages
from mixbench.errors import UsageError

__all__ = ["as_unit", "draw_subset", "take_examples"]


def draw_subset(n: int, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted positions of a random subset of ``size`` of ``n`` examples (all when ``None``)."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def take_examples(
    split: Split, indices: torch.Tensor, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the examples ``indices`` of a split, on the CPU.

    Images are uint8 (n, C, H, W) as stored (or float in [0, 1] for a ``Dataset`` that returns
    floats), unnormalised; labels int64 (n,). A ``Dataset`` split is decoded by a ``DataLoader``
    with ``num_workers`` worker processes.
    """
    if isinstance(split, TensorImages):
        index = indices.to(split.images.device)
        return split.images[index].cpu(), split.labels[index].cpu()
    if indices.numel() == 0:
        raise UsageError("the evaluation subset is empty: the test split has no images")
    loader = DataLoader(
        Subset(split, indices.tolist()), batch_size=64, shuffle=False, num_workers=num_workers
    )
    images, labels = [], []
    for image, label in loader:
        images.append(torch.as_tensor(image))
        labels.append(torch.as_tensor(label, dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (uint8 divided by 255)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()
