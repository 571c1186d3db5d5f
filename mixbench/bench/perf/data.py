"""The data-path benchmarks of ``mixbench perf``: loader, engine and end to end.

Each compares two ways of doing the same work in one process and run, so that a shared, noisy
machine slows both alike: the ratio is the result, absolute images per second are indicative.

- **loader**: images per second served by mixbench's in-memory path (the split decoded once into
  one uint8 tensor on the device; per-sample random crop and flip and the normalisation done for
  the whole batch there) against torchvision's standard pipeline on the same JPEG files
  (``ImageFolder``, PIL ``RandomCrop(size, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize``, a ``DataLoader`` with 2 worker processes). Target: at least 10 times faster.
- **engine**: training images per second through mixbench's Ignite trainer (``train_cell``)
  against a hand-written PyTorch loop with the same model, loader, optimizer, schedule and
  method loss. Target: at least 0.97.
- **end_to_end**: training images per second on real data through the loader against the same
  model and step on one batch already in memory (the network's own speed). Target: at least 0.95.

Rounds interleave the two sides (the order alternating from round to round) after untimed
warm-up rounds; a ratio is the median of the per-round ratios, which cancels slow drifts of
the machine's load.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mixbench.errors import UsageError

LOADER_TARGET = 10.0
ENGINE_TARGET = 0.97
END_TO_END_TARGET = 0.95


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _log(message: str) -> None:
    print(f"perf: {message}", file=sys.stderr, flush=True)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median of the per-round ratios ``numerator[i] / denominator[i]``."""
    if not numerator or len(numerator) != len(denominator):
        raise ValueError("need equally many (and at least one) values on both sides")
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _summary(name: str, rates: list[float]) -> dict[str, float]:
    return {f"{name}_img_s": statistics.median(rates), f"{name}_best_img_s": max(rates)}


# -- the image folder both data benchmarks read ------------------------------------------


def write_jpeg_folder(
    folder: Path,
    *,
    n_train: int = 10_000,
    n_test: int = 1_000,
    image_size: int = 32,
    num_classes: int = 10,
    quality: int = 90,
) -> Path:
    """Write the ``synthetic`` data set's images as JPEG files in the ``imagefolder`` layout.

    ``folder/train/<class>/<i>.jpg`` and ``folder/test/<class>/<i>.jpg``; a folder already
    holding ``train/`` and ``test/`` is reused as it is. Returns ``folder``.
    """
    from torchvision.io import encode_jpeg, write_file

    from mixbench.datasets import create_dataset

    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    bundle = create_dataset(
        "synthetic",
        num_classes=num_classes,
        image_size=image_size,
        n_train=n_train,
        n_test=n_test,
    )
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        for c in range(num_classes):
            (folder / split / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
            path = folder / split / f"class{label:03d}" / f"{i:06d}.jpg"
            write_file(str(path), encode_jpeg(image, quality=quality))
    return folder


def check_image_folder(folder: Path) -> Path:
    """``folder`` if it has ``train/`` (and ``val/`` or ``test/``), else ``UsageError``."""
    folder = Path(folder).expanduser()
    if not (folder / "train").is_dir():
        raise UsageError(
            f"--data-root {folder} has no train/ folder: the loader benchmark reads an image "
            "folder (train/<class>/*.jpg plus val/ or test/), e.g. the CIFAR-10 JPEGs"
        )
    return folder


# -- loader --------------------------------------------------------------------------------


def _cycle(make_epoch: Callable[[int], Iterator[Any]]) -> Iterator[Any]:
    epoch = 0
    while True:
        epoch += 1
        yield from make_epoch(epoch)


def _rate(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    warmup: int,
    min_batches: int,
    min_seconds: float,
) -> float:
    """Images per second of ``batches`` (moved to ``device``) after ``warmup`` batches, over at
    least ``min_batches`` batches and ``min_seconds`` seconds."""
    for _ in range(warmup):
        images, _ = next(batches)
    _sync(device)
    count, done, start = 0, 0, time.perf_counter()
    while done < min_batches or time.perf_counter() - start < min_seconds:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        count += images.shape[0]
        done += 1
    _sync(device)
    return count / (time.perf_counter() - start)


def perf_loader(
    folder: Path,
    *,
    device: str = "cpu",
    batch_size: int = 128,
    num_workers: int = 2,
    padding: int = 4,
    warmup_batches: int = 5,
    min_batches: int = 40,
    min_seconds: float = 3.0,
) -> dict[str, Any]:
    """Images per second of mixbench's in-memory path and of torchvision's standard pipeline
    on the training images of the image folder ``folder``, and their ratio.

    Both yield normalised float batches of ``batch_size`` on ``device``, randomly cropped (zero
    padding ``padding``) and flipped, in a new random order every epoch. The decode-once time
    of mixbench's path (``mixbench_decode_s``; zero when its cache was there) is reported apart.
    """
    from torch.utils.data import DataLoader
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as tv

    from mixbench.datasets import TensorBatchLoader, create_dataset

    dev = torch.device(device)
    start = time.perf_counter()
    bundle = create_dataset("imagefolder", folder)
    decode_s = time.perf_counter() - start
    train = bundle.train
    height, width = bundle.image_size
    fast = TensorBatchLoader(
        train.images,
        train.labels,
        batch_size=batch_size,
        mean=bundle.mean,
        std=bundle.std,
        train=True,
        crop_padding=padding,
        device=dev,
        seed=0,
    )

    def fast_epoch(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        fast.set_epoch(epoch)
        return iter(fast)

    _log(f"loader: mixbench in-memory path on {len(train)} images of {folder}")
    mixbench_rate = _rate(
        _cycle(fast_epoch),
        dev,
        warmup=warmup_batches,
        min_batches=min_batches,
        min_seconds=min_seconds,
    )

    transform = tv.Compose(
        [
            tv.RandomCrop((height, width), padding=padding),
            tv.RandomHorizontalFlip(),
            tv.ToTensor(),
            tv.Normalize(bundle.mean, bundle.std),
        ]
    )
    standard = DataLoader(
        tv_datasets.ImageFolder(str(folder / "train"), transform=transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    _log(f"loader: torchvision ImageFolder + PIL transforms, {num_workers} workers")
    torchvision_rate = _rate(
        _cycle(lambda epoch: iter(standard)),
        dev,
        warmup=warmup_batches,
        min_batches=min_batches,
        min_seconds=min_seconds,
    )
    ratio = mixbench_rate / torchvision_rate
    return {
        "mixbench_img_s": mixbench_rate,
        "torchvision_img_s": torchvision_rate,
        "ratio": ratio,
        "target": LOADER_TARGET,
        "meets_target": ratio >= LOADER_TARGET,
        "images": len(train),
        "image_size": [height, width],
        "batch_size": batch_size,
        "torchvision_workers": num_workers,
        "mixbench_decode_s": decode_s,
        "folder": str(folder),
    }


# -- engine ---------------------------------------------------------------------------------


def bench_cell(
    *,
    device: str,
    method: str,
    batch_size: int,
    steps_per_epoch: int,
    width: int,
    image_size: int,
    num_classes: int,
) -> Any:
    """A one-epoch cell on ``synthetic`` data with exactly ``steps_per_epoch`` training steps,
    no evaluators, no progress bar, float32 off the GPU (AMP as the engine does on one)."""
    from mixbench.config import CellConfig, EvalConfig, RuntimeConfig, ScheduleConfig
    from mixbench.methods import get_method_class, resolve_params

    return CellConfig(
        preset="perf",
        method=method,
        params=resolve_params(get_method_class(method), {}),
        dataset="synthetic",
        dataset_options={
            "n_train": steps_per_epoch * batch_size,
            "n_test": batch_size,
            "num_classes": num_classes,
            "image_size": image_size,
        },
        model="preactresnet18",
        model_options={"width": width},
        seed=0,
        schedule=ScheduleConfig(epochs=1, batch_size=batch_size, schedule="onecycle"),
        eval=EvalConfig(evaluators=[], embedding_subset=None),
        runtime=RuntimeConfig(device=device, progress=False, num_workers=0),
    )


def plain_loop(cell: Any, bundle_cache: dict[Any, Any]) -> tuple[float, torch.nn.Module]:
    """Train ``cell``'s one epoch with a hand-written loop; returns the training images per
    second and the trained backbone.

    The same work as the engine's trainer: the same data set and loaders, model and initial
    weights, method (through the same module), SGD optimizer and per-step schedule, autocast
    and seeding; only the Ignite engine, its events and handlers are left out.
    """
    from mixbench.bench.train.data import load_bundle, make_loaders
    from mixbench.bench.train.engine import (
        TrainingModule,
        amp_dtype,
        build_optimizer,
        build_scheduler,
        resolve_device,
    )
    from mixbench.methods import get_method
    from mixbench.models import create_model
    from mixbench.seeding import epoch_seed, global_seed

    device = resolve_device(cell.runtime.device)
    bundle = load_bundle(cell, cache=bundle_cache)
    train_loader, _ = make_loaders(bundle, cell, device)
    backbone = create_model(cell.model, bundle.num_classes, seed=cell.seed, **cell.model_options)
    backbone = backbone.to(device)
    method = get_method(cell.method, **cell.params)
    module = TrainingModule(backbone, method)
    optimizer = build_optimizer(backbone, cell.schedule)
    scheduler = build_scheduler(optimizer, cell.schedule, len(train_loader))
    dtype = amp_dtype(device, cell.runtime.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=dtype))
        if dtype is not None
        else contextlib.nullcontext
    )

    epoch = 1
    train_loader.set_epoch(epoch)
    method.seed(epoch_seed(cell.seed, epoch), 0)
    torch.manual_seed(global_seed(cell.seed, epoch))
    module.train()
    _sync(device)
    start = time.perf_counter()
    images_seen = 0
    for images, labels in train_loader:
        with autocast():
            loss = module(images, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        images_seen += images.shape[0]
    _sync(device)
    return images_seen / (time.perf_counter() - start), backbone


def trainer_rate(cell: Any, bundle_cache: dict[Any, Any], workdir: Path) -> float:
    """Train ``cell`` with ``train_cell`` in a fresh folder; its training images per second
    (the engine's own timer: the epoch's steps, without evaluation and checkpointing)."""
    from mixbench.bench.train.engine import train_cell

    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        result = train_cell(cell, Path(folder), bundle_cache=bundle_cache)
    return float(result.timings["train_images_per_s"])


def perf_engine(
    *,
    device: str = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    steps_per_epoch: int = 8,
    batch_size: int = 128,
    width: int = 16,
    image_size: int = 32,
    num_classes: int = 10,
    method: str = "erm",
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Training images per second of the Ignite trainer and of a hand-written loop.

    Every round trains a fresh model for one epoch of ``steps_per_epoch`` steps both ways
    (PreActResNet-18 at ``width``, ``method``'s loss); ``warmup`` rounds first are not counted.
    ``ratio_vs_plain_loop`` is the median over rounds of trainer / loop.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    cell = bench_cell(
        device=device,
        method=method,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        width=width,
        image_size=image_size,
        num_classes=num_classes,
    )
    cache: dict[Any, Any] = {}
    trainer, loop = [], []
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        for round_ in range(warmup + rounds):
            sides = [("trainer", trainer), ("loop", loop)]
            for side, out in sides if round_ % 2 == 0 else sides[::-1]:
                rate = (
                    trainer_rate(cell, cache, Path(scratch))
                    if side == "trainer"
                    else plain_loop(cell, cache)[0]
                )
                if round_ >= warmup:
                    out.append(rate)
            phase = "warm-up" if round_ < warmup else "timed"
            _log(f"engine: round {round_ + 1}/{warmup + rounds} ({phase}) done")
    return {
        "ratio_vs_plain_loop": paired_ratio(trainer, loop),
        "ratio_best_vs_plain_loop": max(trainer) / max(loop),
        "target": ENGINE_TARGET,
        "meets_target": paired_ratio(trainer, loop) >= ENGINE_TARGET,
        **_summary("trainer", trainer),
        **_summary("plain_loop", loop),
        "rounds": rounds,
        "steps_per_round": steps_per_epoch,
        "batch_size": batch_size,
        "model": f"preactresnet18 width {width}, {image_size}x{image_size}",
        "method": method,
    }


# -- end to end -------------------------------------------------------------------------------


def perf_end_to_end(
    folder: Path,
    *,
    device: str = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    steps: int = 8,
    batch_size: int = 128,
    width: int = 16,
    method: str = "erm",
) -> dict[str, Any]:
    """Training images per second with the real data of ``folder`` through mixbench's loader
    against the same training step on one batch already in memory.

    One model, optimizer and method serve both sides; each round runs ``steps`` steps of each
    (the order alternating). ``ratio_vs_model_only`` is the median over rounds of real / fixed.
    """
    from mixbench.datasets import create_dataset, make_loader
    from mixbench.methods import get_method
    from mixbench.models import create_model

    if rounds < 1 or warmup < 0 or steps < 1:
        raise ValueError(
            f"need rounds, steps >= 1 and warmup >= 0, got {rounds}, {steps}, {warmup}"
        )
    dev = torch.device(device)
    bundle = create_dataset("imagefolder", folder)
    loader = make_loader(
        bundle.train,
        batch_size=batch_size,
        mean=bundle.mean,
        std=bundle.std,
        train=True,
        device=dev,
        seed=0,
    )
    if len(loader) < steps:
        raise UsageError(
            f"the end-to-end benchmark needs {steps} batches of {batch_size} images but "
            f"{folder} has {len(bundle.train)} training images"
        )
    model = create_model("preactresnet18", bundle.num_classes, width=width, seed=0).to(dev)
    model.train()
    mixer = get_method(method)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader.set_epoch(0)
    fixed = next(iter(loader))

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        mixer.loss(model, images, labels).backward()
        optimizer.step()

    def real(epoch: int) -> float:
        loader.set_epoch(epoch)
        _sync(dev)
        start = time.perf_counter()
        batches = iter(loader)
        for _ in range(steps):
            step(*next(batches))
        _sync(dev)
        return steps * batch_size / (time.perf_counter() - start)

    def model_only(epoch: int) -> float:
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            step(*fixed)
        _sync(dev)
        return steps * batch_size / (time.perf_counter() - start)

    with_data, without = [], []
    for round_ in range(warmup + rounds):
        sides = [(real, with_data), (model_only, without)]
        for run, out in sides if round_ % 2 == 0 else sides[::-1]:
            rate = run(round_ + 1)
            if round_ >= warmup:
                out.append(rate)
        phase = "warm-up" if round_ < warmup else "timed"
        _log(f"end_to_end: round {round_ + 1}/{warmup + rounds} ({phase}) done")
    ratio = paired_ratio(with_data, without)
    return {
        "ratio_vs_model_only": ratio,
        "ratio_best_vs_model_only": max(with_data) / max(without),
        "target": END_TO_END_TARGET,
        "meets_target": ratio >= END_TO_END_TARGET,
        **_summary("real_data", with_data),
        **_summary("model_only", without),
        "rounds": rounds,
        "steps_per_round": steps,
        "batch_size": batch_size,
        "model": f"preactresnet18 width {width}, {bundle.image_size[0]}x{bundle.image_size[1]}",
        "method": method,
        "folder": str(folder),
    }


__all__ = [
    "END_TO_END_TARGET",
    "ENGINE_TARGET",
    "LOADER_TARGET",
    "bench_cell",
    "check_image_folder",
    "paired_ratio",
    "perf_end_to_end",
    "perf_engine",
    "perf_loader",
    "plain_loop",
    "trainer_rate",
    "write_jpeg_folder",
]
