"""``imagenet``: ImageNet-1k (ILSVRC 2012) from the standard ``train/<wnid>/`` and ``val/<wnid>/``
folders, streamed from disk through a ``DataLoader``.

Where torchvision's ``ImageNet`` files are present (``meta.bin``, or the devkit archive
``ILSVRC2012_devkit_t12.tar.gz`` with SciPy installed to parse it), the folders are listed with
``torchvision.datasets.ImageNet``, which checks them against the devkit's classes; otherwise
they are listed like an ``ImageFolder``. Classes are the sorted wnids of ``train/`` in both cases.
Images are decoded with ``torchvision.io`` in the loader's worker processes. Training images
come at full size and get the loader's ``RandomResizedCrop`` to 224 and a horizontal flip
(:func:`mixbench.datasets.loader.train_transform`); evaluation images are resized (shorter side
256) and centre-cropped to 224 here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from mixbench.datasets.base import (
    ALIGNMIXUP_LOGS,
    CorruptionBenchmark,
    DatasetBundle,
    DatasetInfo,
    PublishedResult,
    register_dataset,
    require_root,
)
from mixbench.datasets.folder import class_folders, decode_file, list_split
from mixbench.errors import UsageError

# The per-channel statistics of ImageNet's training set used throughout the literature.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_FILE = "meta.bin"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
EXPECTED = (
    "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the standard ImageNet folders; "
    "ImageNet is not downloaded automatically, its licence requires registration at image-net.org)"
)
INFO = DatasetInfo(
    display_name="ImageNet",
    num_classes=1000,
    train_size=1_281_167,
    test_size=50_000,
    image_size=(224, 224),
    corruption_benchmark=CorruptionBenchmark("ImageNet-C", "folders", ("imagenet-c", "imagenet_c")),
    paper_epochs=300,
    published=(
        PublishedResult(
            "resnet50", "alignmixup", 79.32, "paper-imagenet", ALIGNMIXUP_LOGS, 300, "best"
        ),
        PublishedResult(
            "resnet50",
            "saliencymix",
            78.74,
            "",
            "SaliencyMix repository README (model ResNet50_SaliencyMix_21.26)",
            300,
            "best",
        ),
        PublishedResult(
            "resnet50",
            "puzzlemix",
            78.76,
            "",
            "PuzzleMix repository imagenet/README (error 21.24)",
            300,
            "best",
        ),
        PublishedResult(
            "resnet101", "fmix", 76.72, "", "FMix repository README", 90, note="its ERM 76.51"
        ),
    ),
    description="ImageNet-1k (ILSVRC 2012): streamed from disk, 224x224 crops by default, the "
    "validation split as the test set",
)


class ImageNetImages(Dataset):
    """ImageNet images decoded on access as ``(uint8 RGB (3, H, W), label)``.

    Training (``train=True``): the full decoded image, for the loader's random resized crop
    to ``image_size``. Evaluation: resized so that the shorter side is ``resize_size``, then
    centre-cropped to ``image_size``.
    """

    def __init__(
        self,
        paths: list[str],
        targets: list[int],
        *,
        train: bool,
        image_size: int = 224,
        resize_size: int = 256,
    ) -> None:
        self.paths = paths
        self.targets = targets
        self.train = train
        self.image_size = (image_size, image_size)
        self.resize_size = resize_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_file(self.paths[index])
        if not self.train:
            image = eval_transform(image, self.resize_size, self.image_size[0])
        return image, self.targets[index]


def eval_transform(image: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """Resize ``image`` (C, H, W) so its shorter side is ``resize_size``, centre-crop
    ``crop_size`` x ``crop_size``."""
    image = TF.resize(image, [resize_size], antialias=True)
    return TF.center_crop(image, [crop_size, crop_size])


def locate(root: Path | None) -> Path:
    """The ImageNet folder: ``root`` if it has ``train/``, else ``root/imagenet``."""
    root = require_root("imagenet", root, EXPECTED)
    if not (root / "train").is_dir() and (root / "imagenet" / "train").is_dir():
        root = root / "imagenet"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UsageError(
                f"ImageNet folder {root / split} not found: imagenet expects {EXPECTED}"
            )
    if not class_folders(root / "val"):
        raise UsageError(
            f"ImageNet folder {root / 'val'} has no <wnid>/ class folders: sort the validation "
            f"images into val/<wnid>/ (torchvision's ImageNet does it from ILSVRC2012_img_val.tar "
            f"and {DEVKIT})"
        )
    return root


def has_torchvision_meta(root: Path) -> bool:
    """Whether torchvision's ``ImageNet`` class can be used: ``meta.bin``, or the devkit
    archive and SciPy to parse it."""
    if (root / META_FILE).is_file():
        return True
    return (root / DEVKIT).is_file() and importlib.util.find_spec("scipy") is not None


def list_with_torchvision(root: Path) -> tuple[list[str], dict[str, list]]:
    """``(wnids, {split: [paths, targets]})`` listed by ``torchvision.datasets.ImageNet``."""
    from torchvision.datasets import ImageNet

    splits: dict[str, list] = {}
    wnids: list[str] = []
    for split in ("train", "val"):
        try:
            listing = ImageNet(str(root), split=split)
        except (RuntimeError, FileNotFoundError, KeyError) as exc:
            raise UsageError(
                f"torchvision's ImageNet cannot read {root / split} with {root / META_FILE}: {exc}"
            ) from exc
        if split == "train":
            wnids = list(listing.wnids)
            index = {wnid: i for i, wnid in enumerate(wnids)}
        unknown = sorted(set(listing.wnids) - set(wnids))
        if unknown:
            raise UsageError(
                f"class folder {root / split / unknown[0]} has no counterpart in {root / 'train'}"
            )
        paths = [path for path, _ in listing.samples]
        targets = [index[listing.wnids[t]] for _, t in listing.samples]  # by wnid, not position
        splits[split] = [paths, targets]
    return wnids, splits


def list_as_folders(root: Path) -> tuple[list[str], dict[str, list]]:
    """``(wnids, {split: [paths, targets]})`` listed like an ``ImageFolder``."""
    wnids = class_folders(root / "train")
    if not wnids:
        raise UsageError(f"ImageNet folder {root / 'train'} has no <wnid>/ class folders")
    return wnids, {split: list(list_split(root / split, wnids)) for split in ("train", "val")}


@register_dataset("imagenet", INFO)
def imagenet(
    root: Path | None,
    *,
    download: bool = False,
    image_size: int = 224,
    resize_size: int = 256,
) -> DatasetBundle:
    """ImageNet-1k: ``train/<wnid>/`` and ``val/<wnid>/`` under the data root, read from disk.

    ``download`` is ignored: ImageNet's licence requires registering at image-net.org.

    Args:
        image_size: side of the training crops (random resized crop) and evaluation crops.
        resize_size: evaluation images are resized to this shorter side before the centre crop.
    """
    if not 0 < image_size <= resize_size:
        raise UsageError(
            f"imagenet needs 0 < image_size <= resize_size, got {image_size} and {resize_size}"
        )
    root = locate(root)
    if has_torchvision_meta(root):
        wnids, splits = list_with_torchvision(root)
        how = "torchvision ImageNet"
    else:
        wnids, splits = list_as_folders(root)
        how = "image folders"
    sizes = {"image_size": image_size, "resize_size": resize_size}
    train = ImageNetImages(*splits["train"], train=True, **sizes)
    test = ImageNetImages(*splits["val"], train=False, **sizes)
    return DatasetBundle(
        name="imagenet",
        num_classes=len(wnids),
        class_names=wnids,
        image_size=(image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=train,
        test=test,
        description=f"ImageNet ({root}, {how}, {len(wnids)} classes, {len(train)} training and "
        f"{len(test)} validation images, crops {image_size}x{image_size})",
        label=INFO.display_name,
    )
