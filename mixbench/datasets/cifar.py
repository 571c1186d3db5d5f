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
    ALIGNMIXUP_LOGS,
    NEEDS_STYLE_WEIGHTS,
    CorruptionBenchmark,
    DatasetBundle,
    DatasetInfo,
    PublishedResult,
    TensorImages,
    channel_stats,
    register_dataset,
)
from mixbench.errors import UsageError

#: Where StyleMix's and StyleCutMix's CIFAR numbers are published (the StyleMix paper's own
#: tables use PyramidNet-200; AlignMixup's Table 1 compares them on PreActResNet-18).
#: OpenMixup's CIFAR benchmark (its own post-activation ResNet-18 runs).
OPENMIXUP = "OpenMixup benchmark page (ResNet-18, OpenMixup's)"

STYLE_SOURCES = "StyleMix (Hong et al., CVPR 2021); AlignMixup Table 1 (CVPR 2022)"

CIFAR10_INFO = DatasetInfo(
    display_name="CIFAR-10",
    num_classes=10,
    train_size=50_000,
    test_size=10_000,
    image_size=(32, 32),
    corruption_benchmark=CorruptionBenchmark(
        "CIFAR-10-C", "npy", ("cifar-10-c", "CIFAR10-C", "cifar10-c", "cifar10_c")
    ),
    paper_epochs=2000,
    published=(
        PublishedResult(
            "preactresnet18", "alignmixup", 97.05, "paper-cifar10", ALIGNMIXUP_LOGS, 2000, "best"
        ),
        PublishedResult(
            "wrn16_8", "alignmixup", 96.91, "paper-cifar10", ALIGNMIXUP_LOGS, 2000, "best"
        ),
        PublishedResult(
            "pyramidnet200",
            "fmix",
            98.64,
            "",
            "FMix repository README",
            note="its ERM baseline 98.31",
        ),
        *(
            PublishedResult(
                "preactresnet18", method, None, "", STYLE_SOURCES, note=NEEDS_STYLE_WEIGHTS
            )
            for method in ("stylemix", "stylecutmix")
        ),
    ),
    description="CIFAR-10 (Krizhevsky, 2009): tiny natural images, torchvision binary release",
)
CIFAR100_INFO = DatasetInfo(
    display_name="CIFAR-100",
    num_classes=100,
    train_size=50_000,
    test_size=10_000,
    image_size=(32, 32),
    corruption_benchmark=CorruptionBenchmark(
        "CIFAR-100-C", "npy", ("cifar-100-c", "CIFAR100-C", "cifar100-c", "cifar100_c")
    ),
    paper_epochs=2000,
    published=(
        PublishedResult(
            "preactresnet18", "alignmixup", 81.71, "paper-cifar100", ALIGNMIXUP_LOGS, 2000, "best"
        ),
        PublishedResult(
            "wrn16_8", "alignmixup", 81.23, "paper-cifar100", ALIGNMIXUP_LOGS, 2000, "best"
        ),
        PublishedResult(
            "preactresnet18", "saliencymix", 80.31, "", "Awesome-Mixup table", 300, "unknown"
        ),
        PublishedResult(
            "preactresnet18",
            "puzzlemix",
            80.4,
            "paper-puzzlemix-cifar100",
            "PuzzleMix repository README (Table 3)",
            1200,
            "unknown",
        ),
        PublishedResult(
            "preactresnet18",
            "comixup",
            80.19,
            "paper-comixup-cifar100",
            "Co-Mixup repository log",
            300,
            "last",
            note="best epoch 80.36",
        ),
        PublishedResult("preactresnet18", "fmix", 79.85, "", "Awesome-Mixup table", 200, "unknown"),
        PublishedResult(
            "preactresnet18",
            "guidedmixup",
            81.20,
            "",
            "Awesome-Mixup table",
            note="300 or 1200 epochs, variant (SR or AP) not stated",
        ),
        PublishedResult(
            "resnet18",
            "resizemix",
            79.56,
            "",
            OPENMIXUP,
            200,
            "median of last 10",
        ),
        PublishedResult(
            "resnet18",
            "resizemix",
            79.19,
            "",
            OPENMIXUP,
            400,
            "median of last 10",
        ),
        PublishedResult(
            "resnet18",
            "resizemix",
            80.01,
            "",
            OPENMIXUP,
            800,
            "median of last 10",
        ),
        PublishedResult(
            "resnet18",
            "resizemix",
            79.23,
            "",
            OPENMIXUP,
            1200,
            "median of last 10",
        ),
        PublishedResult(
            "resnet18",
            "gridmixup",
            78.23,
            "",
            OPENMIXUP,
            200,
            "median of last 10",
            note="GridMixup, as OpenMixup's GridMix",
        ),
        PublishedResult(
            "resnet18",
            "gridmixup",
            78.6,
            "",
            OPENMIXUP,
            400,
            "median of last 10",
            note="GridMixup, as OpenMixup's GridMix",
        ),
        PublishedResult(
            "resnet18",
            "gridmixup",
            78.72,
            "",
            OPENMIXUP,
            800,
            "median of last 10",
            note="GridMixup, as OpenMixup's GridMix",
        ),
        PublishedResult(
            "resnet18",
            "gridmixup",
            77.58,
            "",
            OPENMIXUP,
            1200,
            "median of last 10",
            note="GridMixup, as OpenMixup's GridMix",
        ),
        PublishedResult(
            "resnet18",
            "smoothmix",
            77.9,
            "",
            OPENMIXUP,
            200,
            "median of last 10",
            note="trained with OpenMixup's swapped label weights",
        ),
        PublishedResult(
            "resnet18",
            "smoothmix",
            78.77,
            "",
            OPENMIXUP,
            400,
            "median of last 10",
            note="trained with OpenMixup's swapped label weights",
        ),
        PublishedResult(
            "resnet18",
            "smoothmix",
            78.69,
            "",
            OPENMIXUP,
            800,
            "median of last 10",
            note="trained with OpenMixup's swapped label weights",
        ),
        PublishedResult(
            "resnet18",
            "smoothmix",
            78.38,
            "",
            OPENMIXUP,
            1200,
            "median of last 10",
            note="trained with OpenMixup's swapped label weights",
        ),
        *(
            PublishedResult(
                "preactresnet18", method, None, "", STYLE_SOURCES, note=NEEDS_STYLE_WEIGHTS
            )
            for method in ("stylemix", "stylecutmix")
        ),
    ),
    description="CIFAR-100 (Krizhevsky, 2009): 100 fine classes, torchvision binary release",
)


def _to_tensors(split: CIFAR10) -> TensorImages:
    images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return TensorImages(images, torch.tensor(split.targets, dtype=torch.int64))


def load_cifar(name: str, cls: type[CIFAR10], root: Path | None, download: bool) -> DatasetBundle:
    """Both splits of a torchvision CIFAR data set as a :class:`DatasetBundle`."""
    label = (CIFAR10_INFO if cls is CIFAR10 else CIFAR100_INFO).display_name
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
        description=f"{label} (torchvision binary release)",
        label=label,
    )


@register_dataset("cifar10", CIFAR10_INFO)
def cifar10(root: Path | None, *, download: bool = False) -> DatasetBundle:
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 RGB, 10 classes."""
    return load_cifar("cifar10", CIFAR10, root, download)


@register_dataset("cifar100", CIFAR100_INFO)
def cifar100(root: Path | None, *, download: bool = False) -> DatasetBundle:
    """CIFAR-100: 50,000 training and 10,000 test images, 32x32 RGB, 100 fine classes."""
    return load_cifar("cifar100", CIFAR100, root, download)
