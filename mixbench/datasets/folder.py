"""``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (or ``ROOT/test/``).

Files are listed with torchvision's ``ImageFolder`` rules (``make_dataset``, its extensions) and
decoded with ``torchvision.io`` to RGB. In memory (the default) every split is decoded once into
one uint8 tensor and cached on disk (:mod:`mixbench.datasets.cache`); later loads read the cache.
With ``in_memory=False`` the splits are :class:`FolderImages` data sets decoded on the fly.
Class indices follow the sorted class folder names of ``train/``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

import mixbench.datasets.cache as cache
from mixbench.datasets.base import (
    DatasetBundle,
    DatasetInfo,
    TensorImages,
    channel_stats,
    parse_image_size,
    register_dataset,
    require_root,
)
from mixbench.errors import UsageError

EXPECTED = "ROOT/train/<class>/ and ROOT/val/<class>/ or ROOT/test/<class>/ image folders"
STATS_SAMPLE = 512  # images decoded to estimate mean/std when the data is not held in memory


def decode_file(path: str) -> torch.Tensor:
    """The image at ``path`` as a uint8 RGB tensor (3, H, W).

    ``torchvision.io`` decodes about 2.5 times faster than PIL; torchvision 0.29 marks it as
    deprecated in favour of TorchCodec, a warning silenced here as it would repeat per image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise UsageError(f"cannot decode image {path}: {exc}") from exc


def fit_size(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``image`` resized to ``size`` (H, W) when it is given and differs from the image's."""
    if size is None or tuple(image.shape[1:]) == size:
        return image
    return TF.resize(image, list(size), antialias=True)


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``split_dir``."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")


def find_splits(root: Path) -> tuple[Path, Path]:
    """``(train folder, evaluation folder)``: ``val/`` if present, else ``test/``."""
    train = root / "train"
    if not train.is_dir():
        raise UsageError(f"no train/ folder in {root}: imagefolder expects {EXPECTED}")
    for name in ("val", "test"):
        if (root / name).is_dir():
            return train, root / name
    raise UsageError(f"no val/ or test/ folder in {root}: imagefolder expects {EXPECTED}")


def list_split(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """Image paths and class indices of one split; empty or unknown class folders are refused."""
    present = class_folders(split_dir)
    if not present:
        raise UsageError(f"no class folders in {split_dir}: imagefolder expects {EXPECTED}")
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise UsageError(
            f"class folder {split_dir / unknown[0]} has no counterpart in the train/ folder; "
            f"every class of {split_dir.name}/ must also be a class of train/"
        )
    class_to_idx = {name: classes.index(name) for name in present}
    samples = make_dataset(str(split_dir), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    counts = torch.bincount(
        torch.tensor([t for _, t in samples], dtype=torch.long), minlength=len(classes)
    )
    for name in present:
        if counts[class_to_idx[name]] == 0:
            raise UsageError(
                f"class folder {split_dir / name} has no images "
                f"(expected files ending in {', '.join(IMG_EXTENSIONS[:4])}, ...)"
            )
    return [path for path, _ in samples], [target for _, target in samples]


def decode_all(paths: Sequence[str], size: tuple[int, int] | None, desc: str) -> torch.Tensor:
    """All images as one uint8 (N, 3, H, W) tensor, decoded once, with a progress bar.

    Without ``size`` every image must have the first image's size.
    """
    first = fit_size(decode_file(paths[0]), size)
    height, width = first.shape[1:]
    out = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    out[0] = first
    # A bar on a terminal; elsewhere (logs, CI) one line instead of a stream of carriage returns.
    with tqdm(
        total=len(paths), initial=1, desc=desc, unit="img", mininterval=1.0, disable=None
    ) as bar:
        if bar.disable:
            print(f"{desc}: {len(paths):,} images", file=sys.stderr)
        for i, path in enumerate(paths[1:], 1):
            image = decode_file(path)
            if size is None and image.shape[1:] != first.shape[1:]:
                raise UsageError(
                    f"images differ in size: {paths[0]} is {height}x{width} but {path} is "
                    f"{image.shape[1]}x{image.shape[2]}; set the imagefolder option "
                    f"image_size=[height, width] to resize them"
                )
            out[i] = fit_size(image, size)
            bar.update()
    return out


class FolderImages(Dataset):
    """Images decoded on access: ``(uint8 RGB tensor (3, H, W), label)``, resized to
    ``image_size`` where they differ from it."""

    def __init__(self, paths: list[str], targets: list[int], image_size: tuple[int, int]):
        self.paths = paths
        self.targets = targets
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        return fit_size(decode_file(path), self.image_size), self.targets[index]


def cached_split(
    root: Path,
    split: str,
    paths: list[str],
    targets: list[int],
    classes: list[str],
    size: tuple[int, int] | None,
) -> TensorImages:
    """One split as :class:`TensorImages`, from the decode-once cache when it is there."""
    key = cache.cache_key(
        [split, list(size) if size else None, classes, cache.file_fingerprint(paths, root)]
    )

    def build() -> dict[str, torch.Tensor]:
        images = decode_all(paths, size, desc=f"decoding {root.name}/{split}")
        return {"images": images, "labels": torch.tensor(targets, dtype=torch.int64)}

    tensors = cache.load_or_build(root, f"{split}-{key}.pt", build)
    return TensorImages(tensors["images"], tensors["labels"])


def sampled_stats(
    root: Path, paths: list[str], size: tuple[int, int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std estimated from up to ``STATS_SAMPLE`` evenly spaced images (cached)."""
    step = max(1, len(paths) // STATS_SAMPLE)
    sample = paths[::step][:STATS_SAMPLE]
    key = cache.cache_key(["stats", list(size), cache.file_fingerprint(sample, root)])

    def build() -> dict[str, torch.Tensor]:
        images = torch.stack([fit_size(decode_file(p), size) for p in sample])
        mean, std = channel_stats(images)
        return {"mean": torch.tensor(mean), "std": torch.tensor(std)}

    stats = cache.load_or_build(root, f"stats-{key}.pt", build)
    return tuple(stats["mean"].tolist()), tuple(stats["std"].tolist())


@register_dataset(
    "imagefolder",
    DatasetInfo(
        display_name="imagefolder",
        description="any folder of class folders (train/ plus val/ or test/); named after the "
        "folder or its name option",
    ),
)
def imagefolder(
    root: Path | None,
    *,
    download: bool = False,
    image_size: int | Sequence[int] | None = None,
    in_memory: bool = True,
    name: str | None = None,
) -> DatasetBundle:
    """Any folder of class folders: ``ROOT/train/<class>/`` plus ``ROOT/val/`` or ``ROOT/test/``.

    Args:
        image_size: resize every image to this (H, W) (an int for square images); by default
            in memory all images must share one size, and on the fly the first training image's
            size is used.
        in_memory: decode into uint8 tensors once (cached) rather than serving files through a
            ``DataLoader``.
        name: how results and the leaderboard name the data (e.g. ``CIFAR-10`` for the
            CIFAR-10 JPEGs); by default the folder's name.
    """
    root = require_root("imagefolder", root, EXPECTED)
    size = parse_image_size(image_size)
    train_dir, eval_dir = find_splits(root)
    classes = class_folders(train_dir)
    train_paths, train_targets = list_split(train_dir, classes)
    eval_paths, eval_targets = list_split(eval_dir, classes)
    if in_memory:
        train = cached_split(root, "train", train_paths, train_targets, classes, size)
        test = cached_split(root, eval_dir.name, eval_paths, eval_targets, classes, size)
        size = (train.images.shape[2], train.images.shape[3])
        if tuple(test.images.shape[2:]) != size:
            raise UsageError(
                f"{eval_dir.name}/ images are {test.images.shape[2]}x{test.images.shape[3]} but "
                f"train/ images are {size[0]}x{size[1]} in {root}; set the imagefolder option "
                f"image_size=[height, width] to resize both"
            )
        mean, std = channel_stats(train.images)
    else:
        size = size or tuple(decode_file(train_paths[0]).shape[1:])
        train = FolderImages(train_paths, train_targets, size)
        test = FolderImages(eval_paths, eval_targets, size)
        mean, std = sampled_stats(root, train_paths, size)
    return DatasetBundle(
        name="imagefolder",
        num_classes=len(classes),
        class_names=classes,
        image_size=size,
        mean=mean,
        std=std,
        train=train,
        test=test,
        description=f"image folder {root} ({len(classes)} classes, {size[0]}x{size[1]})",
        label=name or root.name,
    )
