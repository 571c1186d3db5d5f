"""``tinyimagenet``: Tiny-ImageNet (the CS231n release), read in its official layout as distributed.

The folder ``tiny-imagenet-200/`` of ``tiny-imagenet-200.zip`` holds ``wnids.txt`` (the 200
WordNet ids), ``train/<wnid>/images/*.JPEG`` (500 images of 64x64 per class) and
``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file name, wnid, bounding box; 50 images
per class). It is read as it is, with no reorganisation. Classes are the sorted wnids
(:func:`tinyimagenet_classes`), the same order that Tiny-ImageNet-C's class folders are matched
to. Both splits are decoded once into uint8 tensors (cached beside the data, see
:mod:`mixbench.datasets.cache`) and served by the in-memory loader; the unlabelled
``test/`` split is not used (the validation split is the test set, as in the papers).
"""

from __future__ import annotations

from pathlib import Path

import mixbench.datasets.archive as archive
from mixbench.datasets.base import (
    ALIGNMIXUP_LOGS,
    CorruptionBenchmark,
    DatasetBundle,
    DatasetInfo,
    PublishedResult,
    channel_stats,
    register_dataset,
)
from mixbench.datasets.folder import cached_split
from mixbench.errors import UsageError

FOLDER = "tiny-imagenet-200"
ARCHIVE_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE_NAME = "tiny-imagenet-200.zip"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SIZE = (64, 64)
EXPECTED = (
    f"the official {FOLDER}/ folder (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG "
    "and val/val_annotations.txt)"
)
INFO = DatasetInfo(
    display_name="Tiny-ImageNet",
    num_classes=200,
    train_size=100_000,
    test_size=10_000,
    image_size=IMAGE_SIZE,
    corruption_benchmark=CorruptionBenchmark(
        "Tiny-ImageNet-C", "folders", ("tiny-imagenet-c", "TinyImageNet-C", "tiny_imagenet_c")
    ),
    paper_epochs=1200,
    published=(
        PublishedResult(
            "preactresnet18",
            "alignmixup",
            66.87,
            "paper-tinyimagenet",
            ALIGNMIXUP_LOGS,
            1200,
            "best",
        ),
        PublishedResult(
            "preactresnet18",
            "puzzlemix",
            63.9,
            "",
            "PuzzleMix repository README (Table 4)",
            1200,
            "unknown",
        ),
    ),
    description="Tiny-ImageNet (CS231n): 200 ImageNet classes at 64x64, the validation split "
    "as the test set",
)


def locate(root: Path | None, download: bool = False) -> Path:
    """The ``tiny-imagenet-200`` folder: ``root`` itself or ``root/tiny-imagenet-200``.

    With ``download`` and neither present, the official archive is downloaded into ``root``,
    its MD5 checked and extracted there. Otherwise a missing folder is a ``UsageError`` naming
    the file that was looked for.
    """
    if root is None:
        raise UsageError(
            f"data set 'tinyimagenet' needs a data root: pass --data-root DIR (the folder "
            f"holding {FOLDER}/, or {FOLDER}/ itself); add --download to fetch it there"
        )
    for folder in (root, root / FOLDER):
        if (folder / "wnids.txt").is_file():
            return folder
    if download:
        zipped = archive.download_archive(ARCHIVE_URL, root / ARCHIVE_NAME, ARCHIVE_MD5)
        archive.safe_extract(zipped, root)
        if (root / FOLDER / "wnids.txt").is_file():
            return root / FOLDER
        raise UsageError(f"{zipped} did not contain {FOLDER}/wnids.txt; delete it and retry")
    where = root / FOLDER if not (root / "train").is_dir() else root
    raise UsageError(
        f"Tiny-ImageNet file {where / 'wnids.txt'} not found: --data-root must hold {EXPECTED} "
        f"(or be that folder); pass --download to fetch {ARCHIVE_URL} into {root}"
    )


def read_wnids(folder: Path) -> list[str]:
    """The class wnids of ``folder/wnids.txt``, sorted: class ``i`` is the ``i``-th wnid."""
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise UsageError(f"{path} lists no wnids; expected one WordNet id per line")
    if len(set(wnids)) != len(wnids):
        raise UsageError(f"{path} lists a wnid twice; expected each class once")
    return sorted(wnids)


def tinyimagenet_classes(root: Path | str) -> list[str]:
    """The class order of Tiny-ImageNet (sorted wnids), for labelling Tiny-ImageNet-C alike.

    ``root`` is the ``tiny-imagenet-200`` folder or the folder holding it.
    """
    return read_wnids(locate(Path(root).expanduser()))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def list_train(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Paths and labels of ``train/<wnid>/images/*.JPEG``, classes in ``wnids`` order."""
    paths: list[str] = []
    targets: list[int] = []
    for index, wnid in enumerate(wnids):
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise UsageError(
                f"Tiny-ImageNet folder {images_dir} not found (wnid {wnid} of wnids.txt); "
                f"expected {EXPECTED}"
            )
        found = _images(images_dir)
        if not found:
            raise UsageError(f"Tiny-ImageNet folder {images_dir} holds no .JPEG images")
        paths.extend(str(p) for p in found)
        targets.extend([index] * len(found))
    return paths, targets


def list_val(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Paths and labels of ``val/images/*`` as listed in ``val/val_annotations.txt``."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UsageError(f"Tiny-ImageNet file {annotations} not found; expected {EXPECTED}")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[str] = []
    targets: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UsageError(
                f"line {number} of {annotations} is malformed: expected tab-separated "
                f"'<file>\\t<wnid>\\t...', got {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise UsageError(
                f"line {number} of {annotations} names wnid {wnid!r}, which is not in wnids.txt"
            )
        path = folder / "val" / "images" / name
        if not path.is_file():
            raise UsageError(
                f"Tiny-ImageNet image {path} (line {number} of {annotations}) not found"
            )
        paths.append(str(path))
        targets.append(index[wnid])
    if not paths:
        raise UsageError(f"{annotations} lists no images")
    return paths, targets


@register_dataset("tinyimagenet", INFO)
def tinyimagenet(root: Path | None, *, download: bool = False) -> DatasetBundle:
    """Tiny-ImageNet: 100,000 training and 10,000 validation images, 64x64 RGB, 200 classes.

    ``root`` is the folder holding ``tiny-imagenet-200/`` or that folder itself; ``download``
    fetches the official archive (checksum verified) when it is missing. Held in memory as
    uint8 tensors (decoded once, cached under ``tiny-imagenet-200/.mixbench-cache/``); any image
    not 64x64 is resized to it.
    """
    folder = locate(root, download)
    wnids = read_wnids(folder)
    train_paths, train_targets = list_train(folder, wnids)
    val_paths, val_targets = list_val(folder, wnids)
    train = cached_split(folder, "train", train_paths, train_targets, wnids, IMAGE_SIZE)
    test = cached_split(folder, "val", val_paths, val_targets, wnids, IMAGE_SIZE)
    mean, std = channel_stats(train.images)
    return DatasetBundle(
        name="tinyimagenet",
        num_classes=len(wnids),
        class_names=wnids,
        image_size=IMAGE_SIZE,
        mean=mean,
        std=std,
        train=train,
        test=test,
        description=f"Tiny-ImageNet ({folder}, {len(wnids)} classes, {len(train)} training and "
        f"{len(test)} validation images, 64x64)",
        label=INFO.display_name,
    )
