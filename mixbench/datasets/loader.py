"""Batch loaders: the whole split as one tensor on the device, or a standard ``DataLoader``.

Both yield ``(images, labels)``: float32 normalised (B, C, H, W) and int64 (B,), on the device;
both have ``set_epoch(epoch)``, which fixes that epoch's order and augmentation from
``(seed, epoch, rank)`` (see :mod:`mixbench.datasets.augment`), and ``len()``, the number of
batches this process gets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.transforms import v2

from mixbench.datasets.augment import (
    crop_flip,
    draw_crop_flip,
    epoch_order,
    normalize,
    normalizer,
    seeded_generator,
    shard_length,
)
from mixbench.datasets.base import Split, TensorImages

Batch = tuple[torch.Tensor, torch.Tensor]


def _check_common(batch_size: int, crop_padding: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else -(-samples // batch_size)


@dataclass(frozen=True)
class Shard:
    """The ``n`` samples of a split as one process sees them, epoch by epoch."""

    n: int
    train: bool
    seed: int
    rank: int
    world_size: int

    def order(self, epoch: int) -> torch.Tensor:
        """The indices visited in ``epoch`` (see :func:`epoch_order`)."""
        return epoch_order(
            self.n,
            train=self.train,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def augment_generator(self, epoch: int) -> torch.Generator:
        """The generator of ``epoch``'s augmentation on this process: ``(seed, epoch, rank)``."""
        return seeded_generator(self.seed, epoch, self.rank, "augment")

    def __len__(self) -> int:
        return shard_length(self.n, self.train, self.rank, self.world_size)


class TensorBatchLoader:
    """Batches of an in-memory split, augmented on its device for the whole batch at once.

    The uint8 images are moved to ``device`` once. Training (``train=True``): every epoch a new
    permutation; with ``augment``, each sample its own random crop of the image zero-padded by
    ``crop_padding`` and, with ``flip``, a horizontal flip with probability 1/2. Evaluation: in
    order, unaugmented. ``drop_last`` defaults to ``train``. Under ``world_size > 1`` process
    ``rank`` gets its shard as described in :func:`~mixbench.datasets.augment.epoch_order`.
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_common(batch_size, crop_padding, rank, world_size)
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images_uint8.dtype} "
                f"{tuple(images_uint8.shape)}"
            )
        if labels.shape != images_uint8.shape[:1]:
            raise ValueError(f"expected {images_uint8.shape[0]} labels, got {tuple(labels.shape)}")
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.scale, self.shift = normalizer(mean, std, self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = train and augment and (crop_padding > 0 or flip)
        self.crop_padding = crop_padding
        self.flip = flip
        self.drop_last = train if drop_last is None else drop_last
        self.shard = Shard(images_uint8.shape[0], train, seed, rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the order and augmentation of the next iteration to those of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return _num_batches(len(self.shard), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        # A generator: the epoch's draws happen at the first batch, after any set_epoch call.
        order = self.shard.order(self.epoch)[: len(self) * self.batch_size]
        if self.augment:
            generator = self.shard.augment_generator(self.epoch)
            params = draw_crop_flip(order.numel(), self.crop_padding, self.flip, generator)
            top, left, flipped = (p.to(self.device) for p in params)
        order = order.to(self.device)
        for start in range(0, order.numel(), self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.augment:
                part = slice(start, start + self.batch_size)
                images = crop_flip(images, top[part], left[part], flipped[part], self.crop_padding)
            yield normalize(images, self.scale, self.shift), self.labels[index]


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for one process and epoch (order as in ``epoch_order``).

    The per-sample seed, drawn from ``(seed, epoch, rank)``, seeds that sample's transform in
    whichever worker loads it, so the augmentation does not depend on the number of workers.
    """

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order and seeds of ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shard)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.shard.order(self.epoch)
        seeds = torch.randint(
            0, 2**62, (order.numel(),), generator=self.shard.augment_generator(self.epoch)
        )
        return iter(zip(order.tolist(), seeds.tolist()))


class SeededTransform(Dataset):
    """``split[index]`` with ``transform`` applied under the global RNG seeded by the sample's
    seed (the global RNG state around it is saved and restored)."""

    def __init__(self, split: Dataset, transform: Any | None) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = key
        image, label = self.split[index]
        if self.transform is None:
            return image, label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), label


def split_image_size(split: Dataset) -> tuple[int, int]:
    """A Dataset split's image size: its ``image_size`` attribute, else its first image's."""
    inner = split
    while isinstance(inner, Subset):
        inner = inner.dataset
    size = getattr(inner, "image_size", None)
    if size is None:
        size = tuple(split[0][0].shape[-2:])
    return (int(size[0]), int(size[1]))


def train_transform(
    image_size: tuple[int, int], crop_padding: int, flip: bool, crop: str = "auto"
) -> v2.Compose:
    """Per-sample training augmentation: padded random crop (small images) or random resized
    crop (images larger than 64 pixels, or ``crop="resized"``), then an optional flip."""
    if crop not in ("auto", "pad", "resized"):
        raise ValueError(f"crop must be 'auto', 'pad' or 'resized', got {crop!r}")
    resized = crop == "resized" or (crop == "auto" and min(image_size) > 64)
    steps: list[Any] = [
        v2.RandomResizedCrop(list(image_size), antialias=True)
        if resized
        else v2.RandomCrop(list(image_size), padding=crop_padding, fill=0)
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


class DataLoaderBatches:
    """A ``DataLoader`` over a Dataset split with the :class:`TensorBatchLoader` contract:
    normalised float32 batches on ``device``, ``set_epoch`` and ``len``."""

    def __init__(
        self,
        loader: DataLoader,
        sampler: EpochSampler,
        device: torch.device,
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> None:
        self.loader, self.sampler, self.device = loader, sampler, device
        self.scale, self.shift = scale, shift

    @property
    def batch_size(self) -> int:
        """Images per batch (per process)."""
        return int(self.loader.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the order and augmentation of the next iteration to those of ``epoch``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, torch.int64, non_blocking=True)
            yield normalize(images, self.scale, self.shift), labels


def make_dataloader(
    split: Dataset,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    augment: bool = True,
    crop_padding: int = 4,
    flip: bool = True,
    drop_last: bool | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    crop: str = "auto",
) -> DataLoaderBatches:
    """Batches of a Dataset split through a standard ``DataLoader`` (decoding in ``num_workers``
    worker processes); same options and contract as :class:`TensorBatchLoader`.

    The split returns ``(uint8 or [0, 1] float image (C, H, W), label)``; training augmentation
    is :func:`train_transform`, normalisation happens on ``device``. ``pin_memory`` defaults to
    ``device`` being a GPU.
    """
    _check_common(batch_size, crop_padding, rank, world_size)
    device = torch.device(device)
    transform = None
    if train and augment:
        transform = train_transform(split_image_size(split), crop_padding, flip, crop)
    sampler = EpochSampler(Shard(len(split), train, seed, rank, world_size))
    loader = DataLoader(
        SeededTransform(split, transform),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train if drop_last is None else drop_last,
        num_workers=num_workers,
        pin_memory=device.type == "cuda" if pin_memory is None else pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoaderBatches(loader, sampler, device, *normalizer(mean, std, device))


def make_loader(
    split: Split,
    *,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    crop: str = "auto",
    **options: Any,
) -> TensorBatchLoader | DataLoaderBatches:
    """:class:`TensorBatchLoader` for a :class:`TensorImages` split, else :func:`make_dataloader`.

    ``options`` are those of :class:`TensorBatchLoader`; the worker settings and ``crop`` apply
    to the ``DataLoader`` path only.
    """
    if isinstance(split, TensorImages):
        return TensorBatchLoader(split.images, split.labels, **options)
    return make_dataloader(
        split,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        crop=crop,
        **options,
    )
