"""Loaders for the official corruption sets: CIFAR-10-C, CIFAR-100-C, Tiny-ImageNet-C, ImageNet-C.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019, arXiv 1903.12261). Two layouts are read, as distributed:

- CIFAR-10-C / CIFAR-100-C: a folder of ``<corruption>.npy`` files, each uint8 of shape
  (5 * N, 32, 32, 3) holding the N test images at severity 1, then 2, ..., 5, and
  ``labels.npy`` with the matching labels (5 * N, or N repeated for every severity).
- Tiny-ImageNet-C / ImageNet-C: ``<corruption>/<severity>/<class>/<image files>``; class indices
  are the sorted class folder names unless a ``class_to_idx`` mapping is given.

Which benchmark belongs to which data set, its layout and the accepted spellings of its folder
are facts of the data sets (``DatasetInfo.corruption_benchmark``, registered beside each data
set), so a data set added with :func:`mixbench.datasets.register_dataset` can name its own.
Nothing is downloaded and nothing is faked: :func:`find_corruption_set` returns ``None`` with a
reason when the files are not there, and a damaged file raises ``UsageError`` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mixbench.errors import UsageError

if TYPE_CHECKING:
    from mixbench.datasets import CorruptionBenchmark

#: The 15 corruptions of the benchmark (mean corruption accuracy is taken over these).
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The 4 held-out corruptions shipped beside them (used only with ``include_extra=True``).
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

SEVERITIES = (1, 2, 3, 4, 5)

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def known_benchmark(name: str) -> CorruptionBenchmark | None:
    """The official corruption benchmark that ``name`` names, or ``None``.

    ``name`` is a registered data set (``cifar10``), a data set's display name (``CIFAR-10``,
    ``Tiny-ImageNet``) or a benchmark's name or folder name (``CIFAR-10-C``); case, ``-`` and
    ``_`` are ignored. Registered names match first, then display names, then benchmarks.
    """
    from mixbench.datasets import dataset_infos

    infos = [(n, i) for n, i in dataset_infos().items() if i.corruption_benchmark is not None]
    spellings: dict[str, CorruptionBenchmark] = {}
    for n, info in infos:
        spellings.setdefault(_key(n), info.corruption_benchmark)
    for _, info in infos:
        spellings.setdefault(_key(info.display_name), info.corruption_benchmark)
    for _, info in infos:
        for folder in info.corruption_benchmark.folders:
            spellings.setdefault(_key(folder), info.corruption_benchmark)
    return spellings.get(_key(name))


def _check_severity(severity: int) -> None:
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise UsageError(f"corruption severity must be an int from 1 to 5, got {severity!r}")


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped array; any read failure becomes a ``UsageError`` naming the file."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(
            f"cannot read {path}: {exc}; the file is truncated or corrupt, download it again"
        ) from None


def cifar_c_labels(folder: str | os.PathLike[str], num_images: int) -> np.ndarray:
    """The labels of a CIFAR-C folder, one per image of a (5 * N)-image corruption file."""
    path = Path(folder) / "labels.npy"
    labels = _load_npy(path)
    if labels.ndim != 1 or labels.shape[0] not in (num_images, num_images // len(SEVERITIES)):
        raise UsageError(
            f"{path} holds labels of shape {labels.shape}, expected ({num_images},): "
            "the file does not match the corruption files, download it again"
        )
    if labels.shape[0] != num_images:
        labels = np.tile(labels, len(SEVERITIES))
    return labels


def load_cifar_c(
    folder: str | os.PathLike[str],
    corruption: str,
    severity: int,
    indices: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one corruption at one severity from a CIFAR-10-C/100-C folder.

    Args:
        folder: the folder holding ``<corruption>.npy`` and ``labels.npy``.
        corruption: the file's stem, e.g. ``"gaussian_noise"``.
        severity: 1..5 (the file's blocks in order).
        indices: positions within the severity's block (default all of them).

    Returns:
        ``(images uint8 (n, 3, H, W), labels int64 (n,))``.
    """
    _check_severity(severity)
    path = Path(folder) / f"{corruption}.npy"
    if not path.is_file():
        raise UsageError(f"no file {path}: {corruption!r} is not in this corruption set")
    images = _load_npy(path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UsageError(
            f"{path} holds {images.dtype} of shape {images.shape}, expected uint8 of shape "
            "(5 * N, H, W, 3): not a CIFAR-C file, download it again"
        )
    if images.shape[0] % len(SEVERITIES):
        raise UsageError(
            f"{path} holds {images.shape[0]} images, not a multiple of 5 severities: "
            "the file is truncated, download it again"
        )
    per_severity = images.shape[0] // len(SEVERITIES)
    labels = cifar_c_labels(folder, images.shape[0])
    start = (severity - 1) * per_severity
    if indices is None:
        rows = np.arange(start, start + per_severity)
    else:
        rows = start + np.asarray(torch.as_tensor(indices, dtype=torch.int64).cpu())
        if rows.size and (rows.min() < start or rows.max() >= start + per_severity):
            raise ValueError(f"indices must lie in [0, {per_severity}) for {path}")
    try:
        block = np.ascontiguousarray(images[rows])
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {exc}; download it again") from None
    image_t = torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()
    label_t = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
    return image_t, label_t


def list_folder_images(
    folder: str | os.PathLike[str],
    corruption: str,
    severity: int,
    class_to_idx: Mapping[str, int] | None = None,
) -> list[tuple[Path, int]]:
    """Sorted ``(file, label)`` pairs under ``<folder>/<corruption>/<severity>/<class>/``.

    Labels are ``class_to_idx[class folder]``, by default the index of the class folder among
    the sorted class folders of that severity.
    """
    _check_severity(severity)
    base = Path(folder) / corruption / str(severity)
    if not base.is_dir():
        raise UsageError(f"no folder {base}: {corruption!r} severity {severity} is missing")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    mapping = (
        dict(class_to_idx) if class_to_idx is not None else {c: i for i, c in enumerate(classes)}
    )
    unknown = [c for c in classes if c not in mapping]
    if unknown:
        raise UsageError(
            f"{base} has class folders {unknown[:3]} that the data set does not know; "
            "is this the corruption set of another data set?"
        )
    items: list[tuple[Path, int]] = []
    for cls in classes:
        files = sorted(f for f in (base / cls).iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        items.extend((f, mapping[cls]) for f in files)
    return items


def load_image_file(path: Path) -> torch.Tensor:
    """One image file as a uint8 (3, H, W) tensor; a damaged file raises ``UsageError``."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, ValueError, OSError) as exc:
        raise UsageError(f"cannot decode image {path}: {exc}; the file is damaged") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class CorruptionSet:
    """An official corruption benchmark found on disk.

    Attributes:
        name: the benchmark's folder name, e.g. ``"CIFAR-10-C"``.
        path: its folder.
        layout: ``"npy"`` (CIFAR-C) or ``"folders"`` (Tiny-ImageNet-C, ImageNet-C).
        corruptions: the corruptions evaluated, in benchmark order.
        missing: benchmark corruptions absent from the folder (the mean leaves them out).
        class_to_idx: class folder -> label for the folder layout (default sorted order).
    """

    name: str
    path: Path
    layout: str
    corruptions: tuple[str, ...]
    missing: tuple[str, ...] = ()
    class_to_idx: Mapping[str, int] | None = None
    severities: tuple[int, ...] = field(default=SEVERITIES)
    official: bool = True

    def num_examples(self, corruption: str, severity: int) -> int:
        """How many images the set holds for one corruption at one severity."""
        if self.layout == "npy":
            path = self.path / f"{corruption}.npy"
            return _load_npy(path).shape[0] // len(SEVERITIES)
        return len(list_folder_images(self.path, corruption, severity, self.class_to_idx))

    def batches(
        self,
        corruption: str,
        severity: int,
        indices: torch.Tensor | None = None,
        batch_size: int = 256,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(uint8 images (b, 3, H, W), int64 labels)`` batches of the selected examples."""
        if self.layout == "npy":
            n = self.num_examples(corruption, severity)
            chosen = torch.arange(n) if indices is None else indices
            for start in range(0, chosen.numel(), batch_size):
                yield load_cifar_c(
                    self.path, corruption, severity, chosen[start : start + batch_size]
                )
            return
        items = list_folder_images(self.path, corruption, severity, self.class_to_idx)
        if indices is not None:
            items = [items[int(i)] for i in indices]
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            images = [load_image_file(p) for p, _ in chunk]
            if len({tuple(im.shape) for im in images}) > 1:
                raise UsageError(
                    f"images of different sizes under {self.path / corruption / str(severity)}"
                )
            yield torch.stack(images), torch.tensor([y for _, y in chunk], dtype=torch.int64)


def find_corruption_set(
    data_root: str | os.PathLike[str] | None,
    dataset: str | CorruptionBenchmark,
    include_extra: bool = False,
    class_to_idx: Mapping[str, int] | None = None,
) -> tuple[CorruptionSet | None, str]:
    """Look for the official corruption set of ``dataset`` under ``data_root``.

    ``dataset`` is a benchmark (a data set's ``DatasetInfo.corruption_benchmark``) or a name
    that :func:`known_benchmark` resolves: a data set name (``cifar10``, ``tiny_imagenet``;
    case, ``-`` and ``_`` ignored), a display name (``CIFAR-10``) or a benchmark folder name
    (``CIFAR-10-C``). The folder is searched as ``<data_root>/<folder name>`` for the accepted
    spellings of the folder's name.

    Returns:
        ``(CorruptionSet, "")`` when found, else ``(None, reason)`` with a one-line reason that
        says where it looked. Damaged files are reported only when read.
    """
    benchmark = known_benchmark(dataset) if isinstance(dataset, str) else dataset
    if benchmark is None:
        return None, f"no official corruption benchmark is known for data set {dataset!r}"
    layout, folder_names = benchmark.layout, benchmark.folders
    if data_root is None:
        return None, f"no data root is set, so {folder_names[0]} cannot be found"
    root = Path(data_root)
    folder = next((root / n for n in folder_names if (root / n).is_dir()), None)
    if folder is None:
        return (
            None,
            f"{folder_names[0]} not found under {root} (download it to {root / folder_names[0]})",
        )
    if layout == "npy":
        found = {p.stem for p in folder.glob("*.npy")} - {"labels"}
        if not (folder / "labels.npy").is_file():
            return None, f"{folder} has no labels.npy"
    else:
        found = {
            d.name
            for d in folder.iterdir()
            if d.is_dir() and any((d / str(s)).is_dir() for s in SEVERITIES)
        }
    wanted = BENCHMARK_CORRUPTIONS + (EXTRA_CORRUPTIONS if include_extra else ())
    present = tuple(c for c in wanted if c in found)
    if include_extra:
        present += tuple(sorted(found - set(wanted)))
    if not present:
        return None, f"{folder} holds none of the benchmark's corruption files"
    missing = tuple(c for c in BENCHMARK_CORRUPTIONS if c not in found)
    return (
        CorruptionSet(
            name=folder_names[0],
            path=folder,
            layout=layout,
            corruptions=present,
            missing=missing,
            class_to_idx=class_to_idx,
        ),
        "",
    )
