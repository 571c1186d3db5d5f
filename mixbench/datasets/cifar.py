"""``cifar10`` and ``cifar100``: the CIFAR binary releases (Krizhevsky, 2009) via torchvision.

The files are read with torchvision's ``CIFAR10``/``CIFAR100`` from ``<root>/cifar-10-batches-py``
or ``<root>/cifar-100-python`` and held in memory as uint8 NCHW tensors. ``download=True`` lets
torchvision fetch and extract the archive into the root.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from mixbench.datasets.base import (
    DatasetBundle,
    TensorImages,
    channel_stats,
    register_dataset,
)
from mixbench.errors import UsageError


def _to_tensors(split: CIFAR10) -> TensorImages:
    images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return TensorImages(images, torch.tensor(split.targets, dtype=torch.int64))


def load_cifar(name: str, cls: type[CIFAR10], root: Path | None, download: bool) -> DatasetBundle:
    """Both splits of a torchvision CIFAR data set as a :class:`DatasetBundle`."""
    expected = f"{cls.base_folder}/ (the extracted {cls.filename})"
    if root is None:
        raise UsageError(
            f"data set {name!r} needs a data root: pass --data-root DIR (holding {expected}); "
            f"add --download to fetch it there"
        )
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise UsageError(
            f"{name} files not found (or corrupted) in {root / cls.base_folder}: pass --download "
            f"to fetch them into {root}, or place the extracted {cls.filename} there"
        ) from exc
    except OSError as exc:  # download refused or failed
        raise UsageError(f"cannot download {name} into {root}: {exc}") from exc
    train_images = _to_tensors(train)
    mean, std = channel_stats(train_images.images)
    return DatasetBundle(
        name=name,
        num_classes=len(train.classes),
        class_names=list(train.classes),
        image_size=(32, 32),
        mean=mean,
        std=std,
        train=train_images,
        test=_to_tensors(test),
        description=f"{'CIFAR-10' if cls is CIFAR10 else 'CIFAR-100'} (torchvision binary release)",
        label="CIFAR-10" if cls is CIFAR10 else "CIFAR-100",
    )


@register_dataset("cifar10")
def cifar10(root: Path | None, *, download: bool = False) -> DatasetBundle:
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 RGB, 10 classes."""
    return load_cifar("cifar10", CIFAR10, root, download)


@register_dataset("cifar100")
def cifar100(root: Path | None, *, download: bool = False) -> DatasetBundle:
    """CIFAR-100: 50,000 training and 10,000 test images, 32x32 RGB, 100 fine classes."""
    return load_cifar("cifar100", CIFAR100, root, download)
