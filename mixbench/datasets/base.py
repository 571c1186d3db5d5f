"""The data set bundle, in-memory splits, the registry (factories and the facts registered with
them, :class:`DatasetInfo`) and the class-balanced training subset."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mixbench.datasets.options import check_option_types
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
        """How results and the leaderboard name the data set: ``label`` (``CIFAR-10``), else the
        display name registered with data set ``name`` (:class:`DatasetInfo`), else ``name``."""
        if self.label:
            return self.label
        return dataset_info(self.name).display_name if self.name in DATASETS else self.name


DatasetFactory = Callable[..., DatasetBundle]

#: The layouts of an official corruption benchmark: ``"npy"`` (CIFAR-10-C, CIFAR-100-C: one
#: ``<corruption>.npy`` per corruption plus ``labels.npy``) and ``"folders"`` (Tiny-ImageNet-C,
#: ImageNet-C: ``<corruption>/<severity>/<class>/<image files>``).
CORRUPTION_LAYOUTS = ("npy", "folders")


@dataclass(frozen=True)
class CorruptionBenchmark:
    """The official corruption benchmark of a data set (Hendrycks & Dietterich, ICLR 2019).

    Attributes:
        name: the benchmark's name, ``"CIFAR-10-C"``; also the folder name looked for first.
        layout: how its files are laid out, one of :data:`CORRUPTION_LAYOUTS`.
        folder_names: further accepted spellings of its folder (``"cifar-10-c"``), looked for
            under the data root after ``name``, in order.
    """

    name: str
    layout: str
    folder_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a corruption benchmark needs a name")
        if self.layout not in CORRUPTION_LAYOUTS:
            raise ValueError(
                f"corruption benchmark {self.name!r}: layout must be one of "
                f"{', '.join(CORRUPTION_LAYOUTS)}, got {self.layout!r}"
            )

    @property
    def folders(self) -> tuple[str, ...]:
        """Every accepted folder name, ``name`` first, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.folder_names)))


#: How a published number was picked from its run: the best test epoch, the last epoch, the
#: median of the last 10 epochs, or not stated by its source.
PUBLISHED_METRICS = ("best", "last", "median of last 10", "unknown")


@dataclass(frozen=True)
class PublishedResult:
    """A published top-1 on the data set, its protocol, and the mixbench preset that runs it.

    Attributes:
        model: the network, as mixbench registers it (``"preactresnet18"``); where no
            mixbench preset reproduces the row, the network as its source names it
            (``"pyramidnet200"``).
        method: the method, as mixbench registers it (``"alignmixup"``), or as its paper
            names it when mixbench cannot train it (``"stylemix"``).
        top1: the published top-1 accuracy, in percent; ``None`` when the number has not been
            transcribed from its source yet (the row then says so).
        preset: the mixbench preset that runs the paper's protocol (``"paper-cifar10"``);
            empty when no mixbench preset does.
        source: where the number comes from (paper table, repository README or logs).
        epochs: the training epochs of the published run; ``None`` when unknown.
        metric: how the number was picked from the run: one of ``PUBLISHED_METRICS``.
        note: one line shown with the row (``"published only: needs pretrained AdaIN VGG-19
            weights"`` for a method mixbench never trains), or empty.
    """

    model: str
    method: str
    top1: float | None
    preset: str
    source: str
    epochs: int | None = None
    metric: str = "unknown"
    note: str = ""

    def __post_init__(self) -> None:
        if self.metric not in PUBLISHED_METRICS:
            raise ValueError(
                f"published result of {self.method!r}: metric must be one of "
                f"{', '.join(repr(m) for m in PUBLISHED_METRICS)}, got {self.metric!r}"
            )


#: The source of the built-in data sets' published results: AlignMixup's own (Venkataramanan et
#: al., CVPR 2022, arXiv 2103.15375), from its repository's training logs, best test epoch.
ALIGNMIXUP_LOGS = "AlignMixup repository logs"

#: Why StyleMix and StyleCutMix are reference rows only.
NEEDS_STYLE_WEIGHTS = "published only: needs pretrained AdaIN VGG-19 weights"


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set without loading it, registered beside its factory.

    Every fact but the display name is optional: ``None`` (or empty) means that it depends on
    the data or the options, or that nobody has stated it.

    Attributes:
        display_name: how users, results and the leaderboard name the data set
            (``"CIFAR-10"``); :func:`register_dataset` fills in the registered name when empty.
        num_classes: the number of classes; ``None`` when it depends on the data or the options
            (``imagefolder``, ``synthetic``).
        train_size: the number of training images (what ``mixbench run --dry-run`` estimates
            the work from); ``None`` when unknown.
        test_size: the number of images of the evaluated split (the test split, or the
            validation split where the test labels are not public); ``None`` when unknown.
        image_size: ``(height, width)`` of the images a model is given with the default
            options; ``None`` when it depends on the data.
        generated: the images are made by mixbench, not collected: a leaderboard table on them
            only checks that the path works, it ranks nothing.
        corruption_benchmark: the official corruption benchmark of the data set (its name,
            layout and accepted folder names), which the ``official_corruptions`` evaluator
            looks for under the data root; ``None`` when there is none.
        paper_epochs: the training epochs of the papers' protocol on this data set (the
            leaderboard warns about runs far shorter); ``None`` when there is none.
        published: published reference results on this data set, shown in the leaderboard's
            paper reference section.
        description: one line about the data set, for ``mixbench datasets``.
    """

    display_name: str = ""
    num_classes: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    image_size: tuple[int, int] | None = None
    generated: bool = False
    corruption_benchmark: CorruptionBenchmark | None = None
    paper_epochs: int | None = None
    published: tuple[PublishedResult, ...] = ()
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The info as JSON-able values (``mixbench datasets --json``); tuples stay tuples."""
        return dataclasses.asdict(self)


def _check_factory(name: str, factory: Any) -> Any:
    if not callable(factory):
        raise TypeError(f"data set {name!r} must be a callable returning a DatasetBundle")
    return factory


DATASETS: Registry[DatasetFactory] = Registry(
    "data set",
    "mixbench.datasets",
    _check_factory,
    default_info=lambda name: DatasetInfo(display_name=name),
)


def register_dataset(
    name: str, info: DatasetInfo | None = None
) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering a data set factory ``f(root, *, download, **options) -> bundle``.

    ``root`` is a ``Path`` or ``None``; a factory that needs one calls :func:`require_root`.
    ``info`` states what is known about the data set (:class:`DatasetInfo`); by default only
    its display name, ``name``, which also fills an empty ``display_name``.
    """
    if info is None:
        info = DatasetInfo()
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"data set {name!r}: info must be a DatasetInfo, got {info!r}")
    if not info.display_name:
        info = dataclasses.replace(info, display_name=name)
    return DATASETS.register(name, info)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered with data set ``name``.

    A data set registered without one (an entry point's factory, say) has the default info,
    which states only its display name. Unknown names raise ``UnknownNameError`` naming the
    close matches and the valid names.
    """
    return DATASETS.info(name)


def dataset_infos() -> dict[str, DatasetInfo]:
    """Every registered data set's info, by registered name, sorted."""
    return {name: dataset_info(name) for name in DATASETS.names()}


def find_dataset_info(display_name: str) -> DatasetInfo | None:
    """The info of the registered data set that users know as ``display_name`` (``"CIFAR-10"``),
    or ``None``: the first, by registered name, whose info has that display name.

    Stored results name their data by display name, so an ``imagefolder`` of the CIFAR-10
    images named ``CIFAR-10`` finds the facts of ``cifar10``.
    """
    for info in dataset_infos().values():
        if info.display_name == display_name:
            return info
    return None


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
    check_option_types(name, factory, options)
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


#: Options that :func:`create_dataset` takes for every data set.
_COMMON = ("train_subset", "subset_seed")


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """Check the options of data set ``name`` (names and types) without loading it.

    ``train_subset`` and ``subset_seed`` (taken by every data set) are checked against
    :func:`~mixbench.datasets.base.create_dataset`'s annotations, the others against the
    factory's; an unknown option is refused where the factory takes no ``**options``.
    """
    factory = DATASETS.get(name)
    own = {k: v for k, v in options.items() if k not in _COMMON}
    _check_options(name, factory, own)
    check_option_types(name, create_dataset, {k: options[k] for k in _COMMON if k in options})
    check_option_types(name, factory, own)


def declared_train_size(name: str, options: dict[str, Any]) -> int | None:
    """The number of training images data set ``name`` has with ``options``, as far as it is
    known without loading it: ``train_subset``, else ``n_train`` (the option or the factory's
    default), else :attr:`DatasetInfo.train_size`; ``None`` when unknown."""
    for key in ("train_subset", "n_train"):
        if isinstance(options.get(key), int):
            return int(options[key])
    parameter = inspect.signature(DATASETS.get(name)).parameters.get("n_train")
    if parameter is not None and isinstance(parameter.default, int):
        return int(parameter.default)
    return dataset_info(name).train_size


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
