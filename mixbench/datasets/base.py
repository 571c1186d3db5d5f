"""The data set bundle, in-memory splits, the registry and the class-balanced training subset."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mixbench.errors import UsageError
from mixbench.registry import Registry


@dataclass(frozen=True)
class TensorImages:
    """A split held in memory: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, indices: torch.Tensor) -> TensorImages:
        """The split restricted to ``indices`` (a new tensor pair; this one is left as it is)."""
        return TensorImages(self.images[indices], self.labels[indices])


Split = TensorImages | Dataset


@dataclass(frozen=True)
class DatasetBundle:
    """A data set ready for training: both splits plus what a model and a loader need to know.

    ``mean`` and ``std`` are per-channel, in [0, 1] pixel units. A split is a
    :class:`TensorImages` (in memory, served by the fast tensor loader) or a torch ``Dataset``
    returning ``(image, label)`` with a uint8 CHW image (or a float one in [0, 1]), served by a
    standard ``DataLoader``.
    """

    name: str
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    test: Split
    description: str = ""
    label: str = ""

    @property
    def display_name(self) -> str:
        """How results and the leaderboard name the data set (``CIFAR-10``); else ``name``."""
        return self.label or self.name


DatasetFactory = Callable[..., DatasetBundle]


def _check_factory(name: str, factory: Any) -> Any:
    if not callable(factory):
        raise TypeError(f"data set {name!r} must be a callable returning a DatasetBundle")
    return factory


DATASETS: Registry[DatasetFactory] = Registry("data set", "mixbench.datasets", _check_factory)


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering a data set factory ``f(root, *, download, **options) -> bundle``.

    ``root`` is a ``Path`` or ``None``; a factory that needs one calls :func:`require_root`.
    """
    return DATASETS.register(name)


def list_datasets(filter: str = "*", exclude: str | None = None) -> list[str]:
    """Registered data set names, sorted, optionally filtered by a shell-style pattern."""
    return DATASETS.names(filter, exclude)


def create_dataset(
    name: str,
    root: str | Path | None = None,
    /,
    *,
    download: bool = False,
    train_subset: int | None = None,
    subset_seed: int = 0,
    **options: Any,
) -> DatasetBundle:
    """Load data set ``name`` from ``root`` with its ``options``.

    Args:
        name: a registered data set (see :func:`list_datasets`).
        root: the data root (``~`` is expanded); data sets that generate their data ignore it.
        download: let data sets that can download do so into ``root``.
        train_subset: keep a class-balanced subset of this many training images
            (``train_subset // num_classes`` per class).
        subset_seed: seeds the subset's choice; independent of a run's seed, so that every
            method and seed trains on the same images.
        options: the data set's own options (``name`` and ``root`` among them, for data sets
            that declare those: ``name`` and ``root`` above are positional-only); an unknown
            one raises ``UsageError``.
    """
    factory = DATASETS.get(name)
    _check_options(name, factory, options)
    path = Path(root).expanduser() if root is not None else None
    bundle = factory(path, download=download, **options)
    if train_subset is not None:
        chosen = balanced_subset(
            split_labels(bundle.train),
            bundle.num_classes,
            train_subset,
            subset_seed,
            what=f"data set {name!r}",
        )
        bundle = dataclasses.replace(
            bundle,
            train=select(bundle.train, chosen),
            description=f"{bundle.description}; training subset of {len(chosen)} images "
            f"(subset seed {subset_seed})",
        )
    return bundle


def _check_options(name: str, factory: DatasetFactory, options: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if p not in ("root", "download")]
    for key in options:
        if key not in valid:
            raise UsageError(
                f"data set {name!r} has no option {key!r}; valid options: "
                f"{', '.join(valid) or 'none'}"
            )


def require_root(name: str, root: Path | None, expected: str) -> Path:
    """``root`` if it is an existing folder, else ``UsageError`` saying what was expected."""
    if root is None:
        raise UsageError(f"data set {name!r} needs a data root: pass --data-root DIR ({expected})")
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UsageError(f"data root {root} {what}: data set {name!r} expects {expected}")
    return root


def split_labels(split: Split) -> torch.Tensor:
    """The int64 labels of a split: ``TensorImages.labels`` or a Dataset's ``targets``."""
    if isinstance(split, TensorImages):
        return split.labels
    if isinstance(split, Subset):
        return split_labels(split.dataset)[torch.as_tensor(split.indices, dtype=torch.long)]
    targets = getattr(split, "targets", None)
    if targets is None:
        raise TypeError(f"{type(split).__name__} has no 'targets'; cannot take a subset of it")
    return torch.as_tensor(targets, dtype=torch.long)


def select(split: Split, indices: torch.Tensor) -> Split:
    """The split restricted to ``indices``."""
    if isinstance(split, TensorImages):
        return split.select(indices)
    return Subset(split, indices.tolist())


def balanced_subset(
    labels: torch.Tensor, num_classes: int, size: int, seed: int, what: str = "data set"
) -> torch.Tensor:
    """Sorted indices of ``size // num_classes`` samples of every class, drawn with ``seed``.

    The same labels, size and seed give the same indices; classes are drawn in class order from
    one generator.
    """
    per_class = size // num_classes
    if size < 1 or per_class < 1:
        raise UsageError(
            f"train_subset must be at least the number of classes ({num_classes}), got {size}"
        )
    if size > labels.numel():
        raise UsageError(
            f"train_subset {size} is larger than the {labels.numel()} training images of {what}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < per_class:
            raise UsageError(
                f"train_subset {size} needs {per_class} images of class {c} but {what} has "
                f"{members.numel()}; choose a smaller train_subset"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images, in [0, 1] units.

    Exact, from each channel's histogram of the 256 pixel values (fast, no float copy).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected non-empty uint8 (N, C, H, W), got {tuple(images.shape)}")
    counts = torch.stack(
        [torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])]
    ).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    var = (counts * values.square()).sum(dim=1) / total - mean.square()
    std = var.clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def parse_image_size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    """An ``image_size`` option (an int or (H, W)) as a pair of positive ints, or None."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise UsageError(f"image_size must be a positive int or [height, width], got {value!r}")
    return (pair[0], pair[1])
