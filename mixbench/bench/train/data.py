"""From a cell's config to its data: the data set bundle and the train/test loaders."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mixbench.config import CellConfig
from mixbench.datasets import (
    DatasetBundle,
    TensorImages,
    balanced_subset,
    create_dataset,
    make_loader,
)
from mixbench.errors import UsageError
from mixbench.models import create_model


def bundle_key(cell: CellConfig) -> tuple[Any, ...]:
    """What identifies a loaded data set (cells that share it reuse one copy in memory)."""
    options = tuple(sorted((k, repr(v)) for k, v in cell.dataset_options.items()))
    return (cell.dataset, cell.runtime.data_root, options)


def load_bundle(cell: CellConfig, cache: dict[Any, DatasetBundle] | None = None) -> DatasetBundle:
    """The cell's data set, from ``cache`` when an earlier cell loaded it already."""
    key = bundle_key(cell)
    if cache is not None and key in cache:
        return cache[key]
    options = dict(cell.dataset_options)
    validation = options.pop("validation", None)
    bundle = create_dataset(
        cell.dataset, cell.runtime.data_root, download=cell.runtime.download, **options
    )
    if validation:
        bundle = carve_validation(bundle, int(validation))
    check_model_fits(cell.model, cell.model_options, bundle)
    if cache is not None:
        cache[key] = bundle
    return bundle


VALIDATION_SEED = 20231105  # fixed: every cell and trial validates on the same images


def carve_validation(bundle: DatasetBundle, size: int) -> DatasetBundle:
    """The bundle with a class-balanced ``size``-image validation split taken out of training.

    The validation images replace the test split (which is never used for tuning) and are no
    longer trained on.
    """
    if not isinstance(bundle.train, TensorImages):
        raise UsageError(
            f"a validation split needs an in-memory training set; {bundle.name!r} streams from "
            "disk: carve it into a separate folder instead"
        )
    chosen = balanced_subset(
        bundle.train.labels, bundle.num_classes, size, VALIDATION_SEED, bundle.name
    )
    keep = torch.ones(len(bundle.train), dtype=torch.bool)
    keep[chosen] = False
    return dataclasses.replace(
        bundle,
        train=bundle.train.select(torch.nonzero(keep).flatten()),
        test=bundle.train.select(chosen),
    )


def check_model_fits(model: str, model_options: dict[str, Any], bundle: DatasetBundle) -> None:
    """Refuse a model whose smallest input is larger than the data set's images."""
    check_model_fits_size(model, model_options, bundle.image_size, bundle.name)


def check_model_fits_size(
    model: str, model_options: dict[str, Any], image_size: tuple[int, int], data_name: str
) -> None:
    """Refuse a model whose smallest input is larger than ``image_size`` (height, width)."""
    with torch.device("meta"):  # no memory, no init cost: only the declared input size
        net = create_model(model, 10, **model_options)
    height, width = image_size
    need = getattr(net, "min_input_size", None)
    if need and min(height, width) < need:
        raise UsageError(
            f"model {model!r} needs images of at least {need}x{need} pixels but data set "
            f"{data_name!r} has {height}x{width}; choose another model (e.g. preactresnet18)"
        )
    exact = getattr(net, "input_size", None)
    if exact and (height, width) != (exact, exact):
        raise UsageError(
            f"model {model!r} takes images of exactly {exact}x{exact} pixels but data set "
            f"{data_name!r} has {height}x{width}; set the model's img_size (--set "
            f"model_options.{model}.img_size={height})"
        )


def declared_image_size(dataset: str, options: dict[str, Any]) -> tuple[int, int] | None:
    """A data set's image size as its options, its registered info (``DatasetInfo.image_size``)
    or its factory's defaults declare it, without loading it; None where only the files can tell
    (an image folder without ``image_size``)."""
    import inspect

    from mixbench.datasets import DATASETS, dataset_info
    from mixbench.datasets.base import parse_image_size

    if "image_size" in options:
        return parse_image_size(options["image_size"])
    registered = dataset_info(dataset).image_size
    if registered is not None:
        return (registered[0], registered[1])
    parameter = inspect.signature(DATASETS.get(dataset)).parameters.get("image_size")
    if parameter is None or parameter.default in (inspect.Parameter.empty, None):
        return None
    return parse_image_size(parameter.default)


def make_loaders(
    bundle: DatasetBundle,
    cell: CellConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Any, Any]:
    """Training and test loaders of a cell (each process its own shard under DDP).

    In-memory splits get the on-device tensor loader; others a ``DataLoader`` with
    ``cell.runtime.num_workers`` persistent worker processes and pinned memory on a GPU.
    """
    common = {
        "mean": bundle.mean,
        "std": bundle.std,
        "device": device,
        "seed": cell.seed,
        "rank": rank,
        "world_size": world_size,
        "num_workers": cell.runtime.num_workers,
    }
    per_process = max(1, cell.schedule.batch_size // world_size)
    train = make_loader(bundle.train, batch_size=per_process, train=True, **common)
    test = make_loader(bundle.test, batch_size=max(256, per_process), train=False, **common)
    if len(train) == 0:
        raise UsageError(
            f"data set {bundle.name!r} has fewer training images than one batch "
            f"({cell.schedule.batch_size}); lower --set schedule.batch_size"
        )
    return train, test
