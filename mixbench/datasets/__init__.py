"""Data sets and their batch loaders.

``create_dataset(name, root, ...)`` returns a :class:`DatasetBundle` (both splits plus class names,
image size and normalisation statistics); ``list_datasets()`` names the registered data sets
(``synthetic``, ``imagefolder``, ``cifar10``, ``cifar100``, ``tinyimagenet``, ``imagenet``, and
any that installed packages add through the entry point group ``mixbench.datasets``);
``register_dataset(name, info=DatasetInfo(...))`` adds one, with the facts known about it
without loading it (display name, sizes, its official corruption benchmark, the papers' epochs,
published results), which ``dataset_info(name)`` returns and ``mixbench datasets`` shows.
``make_loader(split, ...)`` serves a split in batches: in-memory splits through the on-device
:class:`TensorBatchLoader`, others through a standard ``DataLoader``.
"""

from __future__ import annotations

# The data set modules register on import.
from mixbench.datasets import cifar, folder, imagenet, synthetic, tinyimagenet  # noqa: F401
from mixbench.datasets.base import (
    DATASETS,
    CorruptionBenchmark,
    DatasetBundle,
    DatasetInfo,
    PublishedResult,
    Split,
    TensorImages,
    balanced_subset,
    create_dataset,
    dataset_info,
    dataset_infos,
    find_dataset_info,
    list_datasets,
    register_dataset,
)
from mixbench.datasets.loader import (
    DataLoaderBatches,
    TensorBatchLoader,
    make_dataloader,
    make_loader,
)

__all__ = [
    "DATASETS",
    "CorruptionBenchmark",
    "DataLoaderBatches",
    "DatasetBundle",
    "DatasetInfo",
    "PublishedResult",
    "Split",
    "TensorBatchLoader",
    "TensorImages",
    "balanced_subset",
    "create_dataset",
    "dataset_info",
    "dataset_infos",
    "find_dataset_info",
    "list_datasets",
    "make_dataloader",
    "make_loader",
    "register_dataset",
]
