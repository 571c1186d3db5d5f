"""The post-training evaluation suite: every evaluator of a cell's preset, on one trained model.

:func:`run_evaluators` is what ``train_cell`` calls once a cell has finished training and what
``mixbench evaluate CHECKPOINT`` (:func:`cmd_evaluate`) calls on a saved checkpoint; the code is
the same for every method. Which evaluators run, and their settings, come from the cell's
:class:`~mixbench.config.EvalConfig`:

- ``calibration``: ECE, MCE, OE and reliability bins of the full test set. The trainer's
  evaluator measures them after every evaluated epoch, so here they are computed only by the
  clean pass of ``mixbench evaluate``.
- ``fgsm`` and ``pgd``: top-1 under L-infinity attacks in pixel space (:func:`adversarial_accuracy`)
  on a fixed subset of test images, the model in eval mode behind :class:`NormalizedModel`, under
  autocast on CUDA. An example counts as robust only when it is classified correctly both clean
  and attacked (only correctly classified examples are attacked, as AutoAttack does), so the
  accuracy under attack never exceeds the clean accuracy of the subset, stored beside it.
- ``generated_corruptions``: mixbench's own corruption set made with tensor operations (not the
  official benchmark), mean top-1 over corruptions and severities, per-corruption numbers kept.
- ``official_corruptions``: CIFAR-10-C / CIFAR-100-C / Tiny-ImageNet-C / ImageNet-C found under the
  data root (or beside it); skipped with a note stored in the metrics when absent, never faked.
- ``embedding``: alignment and uniformity of the pooled test embeddings on a fixed subsample.

Reproducibility: every random draw (the subsets, PGD's random start, the generated noises) comes
from a generator seeded from the cell's seed and the evaluator's name, so evaluating the same
model twice gives the same numbers, and one evaluator's draws do not depend on which others run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mixbench.bench.evaluators import (
    GeneratedCorruptionSet,
    NormalizedModel,
    corruption_accuracy,
    default_attack_settings,
    embedding_quality,
    fgsm,
    find_corruption_set,
    pgd,
    reliability_diagram_data,
)
from mixbench.config import CellConfig, EvalConfig
from mixbench.datasets import DatasetBundle
from mixbench.datasets.base import Split, TensorImages
from mixbench.errors import UsageError

__all__ = [
    "EvalReport",
    "adversarial_accuracy",
    "attack_settings",
    "clean_metrics",
    "cmd_evaluate",
    "evaluator_generator",
    "load_cell_checkpoint",
    "run_evaluators",
    "take_examples",
]

#: Seconds between two heartbeats of a long evaluation (the results store marks a cell whose
#: worker stops beating as abandoned).
HEARTBEAT_SECONDS = 30.0


@dataclass
class EvalReport:
    """What :func:`run_evaluators` measured: metrics to store and seconds spent per evaluator."""

    metrics: dict[str, Any]
    timings: dict[str, float]


def evaluator_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from the cell's ``seed`` and the draw's ``purpose`` (a name).

    Each purpose gets its own stream, so that the draws of one evaluator do not depend on which
    other evaluators run, or in which order.
    """
    salt = zlib.crc32(purpose.encode())
    return torch.Generator().manual_seed((int(seed) * 2_654_435_761 + salt) % 2**63)


def attack_settings(config: EvalConfig, image_size: tuple[int, int]) -> dict[str, float | int]:
    """FGSM and PGD settings of ``config`` with unset values taken from the image size.

    Defaults (:func:`~mixbench.bench.evaluators.default_attack_settings`): eps 8/255 and PGD step
    2/255 up to 32 pixels, eps 4/255 and step 1/255 on larger images; ``pgd_steps`` as set.
    """
    default = default_attack_settings(tuple(image_size))
    return {
        "fgsm_eps": config.fgsm_eps if config.fgsm_eps is not None else default["fgsm"]["eps"],
        "pgd_eps": config.pgd_eps if config.pgd_eps is not None else default["pgd"]["eps"],
        "pgd_step_size": (
            config.pgd_step_size
            if config.pgd_step_size is not None
            else default["pgd"]["step_size"]
        ),
        "pgd_steps": int(config.pgd_steps),
    }


# -- data ---------------------------------------------------------------------------------


def draw_subset(n: int, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """Sorted positions of a random subset of ``size`` of ``n`` examples (all when ``None``)."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def take_examples(
    split: Split, indices: torch.Tensor, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the examples ``indices`` of a split, on the CPU.

    Images are uint8 (n, C, H, W) as stored (or float in [0, 1] for a ``Dataset`` that returns
    floats), unnormalised; labels int64 (n,). A ``Dataset`` split is decoded by a ``DataLoader``
    with ``num_workers`` worker processes.
    """
    if isinstance(split, TensorImages):
        index = indices.to(split.images.device)
        return split.images[index].cpu(), split.labels[index].cpu()
    if indices.numel() == 0:
        raise UsageError("the evaluation subset is empty: the test split has no images")
    loader = DataLoader(
        Subset(split, indices.tolist()), batch_size=64, shuffle=False, num_workers=num_workers
    )
    images, labels = [], []
    for image, label in loader:
        images.append(torch.as_tensor(image))
        labels.append(torch.as_tensor(label, dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def _as_unit(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (uint8 divided by 255)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


# -- small helpers ----------------------------------------------------------------------


class _Heartbeat:
    """Calls ``beat`` at most every :data:`HEARTBEAT_SECONDS` (a no-op without one)."""

    def __init__(self, beat: Callable[[], None] | None) -> None:
        self.beat = beat
        self.last = time.monotonic()

    def __call__(self) -> None:
        if self.beat is not None and time.monotonic() - self.last > HEARTBEAT_SECONDS:
            self.beat()
            self.last = time.monotonic()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _restored_modes(model: nn.Module) -> Iterator[None]:
    """Leave every module's train/eval flag as it was found."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# -- evaluators -------------------------------------------------------------------------


def adversarial_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    fgsm_eps: float | None,
    pgd_eps: float | None,
    pgd_step_size: float = 2 / 255,
    pgd_steps: int = 10,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Clean, FGSM and PGD top-1 of ``model`` on ``images`` in one batched pass.

    Only the examples the model classifies correctly are attacked; an example counts as correct
    under an attack when it is correct both clean and attacked, so neither attack's accuracy can
    exceed the clean one. FGSM (``fgsm_eps``) and PGD with a random start (``pgd_eps``,
    ``pgd_step_size``, ``pgd_steps``, its start drawn by ``generator``) run in eval mode in pixel
    space; ``None`` for an eps skips that attack.

    Args:
        model: maps [0, 1] images to logits (see :class:`NormalizedModel`).
        images: (n, C, H, W) uint8, or float in [0, 1]; labels (n,) integer labels.
        batch_size: examples per batch; device, amp_dtype: where and in which precision to run.
        heartbeat: called after every batch.

    Returns:
        ``{"clean_top1", "fgsm_top1", "pgd_top1", "examples", "fgsm_seconds", "pgd_seconds"}``;
        the entries of a skipped attack are left out.
    """
    device = torch.device(device)
    if images.shape[0] == 0:
        raise UsageError("the attack subset is empty: the test split has no images")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    clean = fgsm_correct = pgd_correct = 0
    seconds = {"fgsm": 0.0, "pgd": 0.0}

    def predict(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad(), _autocast(device, amp_dtype):
            return model(x).argmax(dim=1)

    with _restored_modes(model):
        for start in range(0, images.shape[0], batch_size):
            x = _as_unit(images[start : start + batch_size].to(device, non_blocking=True))
            y = labels[start : start + batch_size].to(device, non_blocking=True)
            right = predict(x) == y
            clean += int(right.sum())
            keep = right.nonzero().flatten()
            if keep.numel():
                xs, ys = x[keep], y[keep]
                if fgsm_eps is not None:
                    began = time.perf_counter()
                    adv = fgsm(model, xs, ys, fgsm_eps, amp_dtype=amp_dtype)
                    fgsm_correct += int((predict(adv) == ys).sum())
                    _sync(device)
                    seconds["fgsm"] += time.perf_counter() - began
                if pgd_eps is not None:
                    began = time.perf_counter()
                    adv = pgd(
                        model,
                        xs,
                        ys,
                        pgd_eps,
                        pgd_step_size,
                        pgd_steps,
                        generator=generator,
                        amp_dtype=amp_dtype,
                    )
                    pgd_correct += int((predict(adv) == ys).sum())
                    _sync(device)
                    seconds["pgd"] += time.perf_counter() - began
            if heartbeat is not None:
                heartbeat()
    n = int(images.shape[0])
    out: dict[str, Any] = {"clean_top1": clean / n, "examples": n}
    if fgsm_eps is not None:
        out["fgsm_top1"] = fgsm_correct / n
        out["fgsm_seconds"] = seconds["fgsm"]
    if pgd_eps is not None:
        out["pgd_top1"] = pgd_correct / n
        out["pgd_seconds"] = seconds["pgd"]
    return out


def _corruption_suite(
    model: nn.Module,
    source: Any,
    *,
    limit: int | None,
    seed: int,
    purpose: str,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    heartbeat: Callable[[], None],
) -> dict[str, Any]:
    """:func:`corruption_accuracy` one corruption at a time (heartbeats between them).

    Every corruption's subset is drawn from a fresh generator of the same seed, so the positions
    (and the numbers) are those of one call over the whole set.
    """
    parts = []
    for corruption in source.corruptions:
        single = dataclasses.replace(source, corruptions=(corruption,))
        parts.append(
            corruption_accuracy(
                model,
                single,
                limit=limit,
                generator=evaluator_generator(seed, purpose),
                batch_size=batch_size,
                device=device,
                amp_dtype=amp_dtype,
            )
        )
        heartbeat()
    per_corruption = {k: v for p in parts for k, v in p["per_corruption"].items()}
    return {
        "mean": sum(per_corruption.values()) / len(per_corruption),
        "per_corruption": per_corruption,
        "per_severity": {k: v for p in parts for k, v in p["per_severity"].items()},
        "severities": list(source.severities),
        "examples": max(p["examples"] for p in parts),
        "official": bool(source.official),
    }


def _official_source(bundle: DatasetBundle, cell: CellConfig) -> tuple[Any | None, str]:
    """The official corruption set of the cell's data set, or ``(None, why it is skipped)``.

    Looked for under the data root and, for a data root that is the data set's own folder (the
    ``imagefolder`` layout), beside it. ``eval.corruption_benchmark`` names the benchmark when the
    data set's name does not (e.g. ``"CIFAR-10-C"`` for CIFAR-10 stored as an image folder).
    """
    config = cell.eval
    benchmark = config.corruption_benchmark or cell.dataset
    root = cell.runtime.data_root
    roots = [None] if root is None else [Path(root).expanduser()]
    if root is not None:
        roots.append(roots[0].resolve().parent)
    class_to_idx = {name: i for i, name in enumerate(bundle.class_names)}
    reason = ""
    for candidate in roots:
        found, why = find_corruption_set(candidate, benchmark, class_to_idx=class_to_idx)
        if found is not None:
            break
        reason = reason or why
    else:
        if "no official corruption benchmark is known" in reason:
            reason += " (set eval.corruption_benchmark, e.g. CIFAR-10-C, to name one)"
        return None, reason
    severities = tuple(s for s in found.severities if s in config.corruption_severities)
    found = dataclasses.replace(found, severities=severities)
    # A benchmark of another image size or more classes would give meaningless numbers.
    first = next(found.batches(found.corruptions[0], severities[0], torch.arange(1), 1))
    size = tuple(first[0].shape[-2:])
    if size != tuple(bundle.image_size):
        return None, (
            f"{found.name} at {found.path} holds {size[0]}x{size[1]} images but data set "
            f"{bundle.name!r} has {bundle.image_size[0]}x{bundle.image_size[1]}"
        )
    if found.layout == "npy":
        from mixbench.bench.evaluators._official import cifar_c_labels

        n = found.num_examples(found.corruptions[0], severities[0]) * 5
        top = int(cifar_c_labels(found.path, n).max())
        if top >= bundle.num_classes:
            return None, (
                f"{found.name} at {found.path} has label {top} but data set {bundle.name!r} "
                f"has {bundle.num_classes} classes"
            )
    return found, ""


def _embeddings(
    backbone: nn.Module,
    images: torch.Tensor,
    normalize: NormalizedModel,
    *,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Pooled embeddings (n, d), float32 on the CPU, of [0, 1] or uint8 ``images``."""
    out = []
    with _restored_modes(backbone), torch.no_grad():
        backbone.eval()
        for start in range(0, images.shape[0], batch_size):
            x = _as_unit(images[start : start + batch_size].to(device))
            x = (x - normalize.mean) / normalize.std
            with _autocast(device, amp_dtype):
                out.append(backbone.embed(x).float().cpu())
    return torch.cat(out)


def clean_metrics(
    backbone: nn.Module,
    bundle: DatasetBundle,
    cell: CellConfig,
    device: torch.device,
    calibration: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5 (more than 10 classes), NLL and calibration on the full test set.

    The same ignite metrics and loader as the trainer's evaluator, so the numbers of a
    checkpoint match the ones stored when it was trained (on the same device).
    """
    from ignite.engine import Engine

    from mixbench.bench.engine import amp_dtype
    from mixbench.bench.evaluation import attach_metrics
    from mixbench.datasets import make_loader

    dtype = amp_dtype(device, cell.runtime.amp)
    loader = make_loader(
        bundle.test,
        batch_size=max(256, cell.schedule.batch_size),
        train=False,
        mean=bundle.mean,
        std=bundle.std,
        device=device,
        seed=cell.seed,
        num_workers=cell.runtime.num_workers,
    )

    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        backbone.eval()
        images, labels = batch
        with torch.no_grad(), _autocast(device, dtype):
            logits = backbone(images)
        return logits.float(), labels

    evaluator = Engine(step)
    attach_metrics(evaluator, bundle.num_classes, cell.eval.calibration_bins)
    with _restored_modes(backbone):
        evaluator.run(loader)
    metrics = evaluator.state.metrics
    out: dict[str, Any] = {"top1": float(metrics["top1"]), "nll": float(metrics["nll"])}
    if "top5" in metrics:
        out["top5"] = float(metrics["top5"])
    if calibration:
        stats = metrics["calibration"]
        out.update({k: float(stats[k]) for k in ("ece", "mce", "oe")})
        out["reliability"] = reliability_diagram_data(stats)
    return out


@dataclass
class _Context:
    """What every evaluator of one run needs: the model, the data, the cell and the device."""

    backbone: nn.Module
    model: NormalizedModel
    bundle: DatasetBundle
    cell: CellConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    beat: _Heartbeat

    def subset(self, size: int | None, purpose: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` test examples (all for ``None``) drawn with the cell's seed for ``purpose``."""
        test = self.bundle.test
        chosen = draw_subset(len(test), size, evaluator_generator(self.cell.seed, purpose))
        return take_examples(test, chosen, self.cell.runtime.num_workers)


#: What one evaluator gives: metrics, timings and its resolved settings.
_Part = tuple[dict[str, Any], dict[str, float], dict[str, Any]]


def _attacks(ctx: _Context, wanted: list[str]) -> _Part:
    config = ctx.cell.eval
    attack = attack_settings(config, ctx.bundle.image_size)
    images, labels = ctx.subset(config.attack_subset, "attack")
    result = adversarial_accuracy(
        ctx.model,
        images,
        labels,
        fgsm_eps=attack["fgsm_eps"] if "fgsm" in wanted else None,
        pgd_eps=attack["pgd_eps"] if "pgd" in wanted else None,
        pgd_step_size=attack["pgd_step_size"],
        pgd_steps=attack["pgd_steps"],
        generator=evaluator_generator(ctx.cell.seed, "pgd"),
        batch_size=config.batch_size,
        device=ctx.device,
        amp_dtype=ctx.amp_dtype,
        heartbeat=ctx.beat,
    )
    metrics = {"attack_clean_top1": result["clean_top1"]}
    timings = {}
    for name in ("fgsm", "pgd"):
        if name in wanted:
            metrics[f"{name}_top1"] = result[f"{name}_top1"]
            timings[f"eval_seconds_{name}"] = result[f"{name}_seconds"]
    settings = {
        **{k: v for k, v in attack.items() if k.split("_")[0] in wanted},
        "examples": result["examples"],
        "norm": "Linf",
        "space": "pixel",
        "random_start": True,
        "amp": None if ctx.amp_dtype is None else str(ctx.amp_dtype).replace("torch.", ""),
    }
    return metrics, timings, settings


def _corruptions(ctx: _Context, source: Any, limit: int | None, purpose: str) -> dict[str, Any]:
    return _corruption_suite(
        ctx.model,
        source,
        limit=limit,
        seed=ctx.cell.seed,
        purpose=purpose,
        batch_size=ctx.cell.eval.batch_size,
        device=ctx.device,
        amp_dtype=ctx.amp_dtype,
        heartbeat=ctx.beat,
    )


def _generated(ctx: _Context) -> _Part:
    config = ctx.cell.eval
    images, labels = ctx.subset(config.corruption_subset, "corruptions")
    source = GeneratedCorruptionSet(
        images,
        labels,
        seed=ctx.cell.seed,
        corruptions=tuple(config.generated_corruptions),
        severities=tuple(config.corruption_severities),
    )
    result = _corruptions(ctx, source, None, "generated")
    settings = {
        "corruptions": list(source.corruptions),
        "severities": list(source.severities),
        "examples": int(images.shape[0]),
    }
    return (
        {"corruption_generated_top1": result["mean"], "corruption_generated": result},
        {},
        settings,
    )


def _official(ctx: _Context) -> _Part:
    found, note = _official_source(ctx.bundle, ctx.cell)
    if found is None:
        return (
            {"corruption_official_note": f"official corruptions skipped: {note}"},
            {},
            {"skipped": note},
        )
    result = _corruptions(ctx, found, ctx.cell.eval.official_subset, "official")
    result["benchmark"] = found.name
    result["missing"] = list(found.missing)
    settings = {
        "benchmark": found.name,
        "corruptions": list(found.corruptions),
        "missing": list(found.missing),
        "severities": list(found.severities),
        "examples": result["examples"],
    }
    return {"corruption_official_top1": result["mean"], "corruption_official": result}, {}, settings


def _embedding(ctx: _Context) -> _Part:
    config = ctx.cell.eval
    if not callable(getattr(ctx.backbone, "embed", None)):
        name = type(ctx.backbone).__name__
        return (
            {"embedding_note": f"embedding quality skipped: {name} has no embed(x) method"},
            {},
            {},
        )
    images, labels = ctx.subset(config.embedding_subset, "embedding")
    z = _embeddings(
        ctx.backbone,
        images,
        ctx.model,
        batch_size=config.batch_size,
        device=ctx.device,
        amp_dtype=ctx.amp_dtype,
    )
    settings = {"examples": int(z.shape[0]), "t": config.uniformity_t}
    try:
        metrics = embedding_quality(z, labels, t=config.uniformity_t, num_samples=None)
    except UsageError as exc:  # e.g. no two embeddings of one class in a tiny subsample
        return {"embedding_note": f"embedding quality skipped: {exc}"}, {}, settings
    return dict(metrics), {}, settings


#: The evaluators after the attacks, in the order they run.
_PARTS = (
    ("generated_corruptions", _generated),
    ("official_corruptions", _official),
    ("embedding", _embedding),
)


def run_evaluators(
    backbone: nn.Module,
    bundle: DatasetBundle,
    cell: CellConfig,
    device: torch.device | str,
    *,
    clean: bool = False,
    heartbeat: Callable[[], None] | None = None,
) -> EvalReport:
    """Run the evaluators of ``cell.eval`` on a trained ``backbone``; the same for every method.

    Args:
        backbone: maps normalised images to logits (the cell's trained network); a staged
            network's ``embed`` gives the embeddings. Its parameters and train/eval flags are
            left as they were.
        bundle: the cell's data set (its test split is evaluated).
        cell: the cell's config: ``eval`` (what runs, sizes, settings), ``seed`` (every draw),
            ``runtime.amp`` (autocast on CUDA), ``runtime.data_root`` (official corruptions),
            ``runtime.num_workers`` (decoding a streamed test split).
        device: where to run; the backbone must already be there.
        clean: also measure the clean metrics of the full test set (top-1, NLL, and with the
            ``calibration`` evaluator ECE, MCE, OE and reliability bins), as ``mixbench evaluate``
            does; the trainer measures those itself.
        heartbeat: called now and then during a long evaluation.

    Returns:
        An :class:`EvalReport`. Metrics: ``fgsm_top1``, ``pgd_top1`` and ``attack_clean_top1``
        (the clean top-1 of the attack subset); ``corruption_generated_top1`` with
        ``corruption_generated`` (per corruption and severity); ``corruption_official_top1``
        with ``corruption_official``, or ``corruption_official_note`` saying why it was skipped;
        ``alignment`` and ``uniformity`` (or ``embedding_note``); and ``eval_settings``, the
        resolved settings (attack eps and steps, subset sizes, corruptions, severities).
        Timings: ``evaluators_seconds`` (all of it) and ``eval_seconds_<evaluator>``.
    """
    from mixbench.bench.engine import amp_dtype

    began = time.perf_counter()
    device = torch.device(device)
    wanted = [name for name in EvalConfig.EVALUATORS if name in cell.eval.evaluators]
    if cell.dataset_options.get("validation"):
        # A tuning trial: the test split is a validation split carved from the training set,
        # and only the objective (clean top-1) matters there.
        wanted = []
    ctx = _Context(
        backbone=backbone,
        model=NormalizedModel(backbone, bundle.mean, bundle.std).to(device),
        bundle=bundle,
        cell=cell,
        device=device,
        amp_dtype=amp_dtype(device, cell.runtime.amp),
        beat=_Heartbeat(heartbeat),
    )
    metrics: dict[str, Any] = {}
    timings: dict[str, float] = {}
    settings: dict[str, Any] = {"evaluators": wanted}

    if clean:
        start = time.perf_counter()
        metrics.update(clean_metrics(backbone, bundle, cell, device, "calibration" in wanted))
        timings["eval_seconds_clean"] = time.perf_counter() - start
        ctx.beat()
    if "fgsm" in wanted or "pgd" in wanted:
        part_metrics, part_timings, settings["attack"] = _attacks(ctx, wanted)
        metrics.update(part_metrics)
        timings.update(part_timings)
    for name, evaluate in _PARTS:
        if name not in wanted:
            continue
        start = time.perf_counter()
        part_metrics, part_timings, part_settings = evaluate(ctx)
        _sync(device)
        metrics.update(part_metrics)
        timings.update(part_timings)
        timings[f"eval_seconds_{name}"] = time.perf_counter() - start
        if part_settings:
            settings[name] = part_settings
        ctx.beat()
    metrics["eval_settings"] = settings
    timings["evaluators_seconds"] = time.perf_counter() - began
    return EvalReport(metrics=metrics, timings=timings)


# -- mixbench evaluate --------------------------------------------------------------------


def load_cell_checkpoint(checkpoint: Path) -> tuple[CellConfig, dict[str, Any]]:
    """The cell config (``cell.json`` beside it) and the state of a saved checkpoint.

    Raises ``UsageError`` with a one-line message for a missing or unreadable file.
    """
    from mixbench.bench.engine import CELL_FILE
    from mixbench.config import from_dict

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(
            f"checkpoint {checkpoint} does not exist; pass a DIR/cells/<key>/checkpoint_<epoch>.pt "
            "written by mixbench run"
        )
    cell_file = checkpoint.parent / CELL_FILE
    if not cell_file.is_file():
        raise UsageError(
            f"no {CELL_FILE} beside {checkpoint}: mixbench evaluate needs the cell folder "
            "written by mixbench run (DIR/cells/<key>/)"
        )
    try:
        data = json.loads(cell_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {cell_file}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{cell_file} does not hold a cell configuration")
    cell = from_dict(CellConfig, data, CELL_FILE)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or not a torch file at all
        raise UsageError(
            f"cannot read checkpoint {checkpoint} ({type(exc).__name__}); it is truncated "
            "or not a mixbench checkpoint"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UsageError(f"checkpoint {checkpoint} holds no model weights ('model' entry)")
    return cell, state


def _checkpoint_epoch(state: dict[str, Any]) -> int | None:
    """The epoch a checkpoint was saved at (from its trainer state), or ``None``."""
    trainer = state.get("trainer")
    if not isinstance(trainer, dict):
        return None
    if "epoch" in trainer:
        return int(trainer["epoch"])
    if "iteration" in trainer and trainer.get("epoch_length"):
        return int(trainer["iteration"]) // int(trainer["epoch_length"])
    return None


#: Metrics stored as fractions that people read as percentages (as the leaderboard prints them).
PERCENT_METRICS = ("ece", "mce", "oe")


def is_percentage(name: str) -> bool:
    """True for accuracies and calibration errors: stored in [0, 1], printed in percent."""
    return name in PERCENT_METRICS or name.endswith(("top1", "top5"))


def _format_value(name: str, value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and is_percentage(name):
        return f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``mixbench evaluate CHECKPOINT``: every evaluator of the cell's preset on a checkpoint.

    Prints the metrics (with ``--json`` a JSON object with ``metrics`` and ``timings``).
    """
    from tabulate import tabulate

    from mixbench.bench.data import load_bundle
    from mixbench.bench.engine import resolve_device
    from mixbench.models import create_model

    cell, state = load_cell_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    cell.runtime.device = args.device
    if args.data_root:
        cell.runtime.data_root = args.data_root
    bundle = load_bundle(cell)
    backbone = create_model(cell.model, bundle.num_classes, seed=cell.seed, **cell.model_options)
    try:
        backbone.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(
            f"checkpoint {args.checkpoint} does not fit model {cell.model!r}: {first}"
        ) from None
    backbone.to(device)
    report = run_evaluators(backbone, bundle, cell, device, clean=True)
    epoch = _checkpoint_epoch(state)
    out = {
        "checkpoint": str(args.checkpoint),
        "key": cell.key,
        "method": cell.method,
        "dataset": cell.dataset,
        "model": cell.model,
        "seed": cell.seed,
        "epoch": epoch,
        "metrics": report.metrics,
        "timings": report.timings,
    }
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    rows = [
        [name, _format_value(name, value)]
        for name, value in sorted(report.metrics.items())
        if isinstance(value, (int, float, str)) and not isinstance(value, bool)
    ]
    rows += [[name, f"{value:.2f} s"] for name, value in sorted(report.timings.items())]
    print(f"{cell.method} / {cell.dataset} / {cell.model} / seed {cell.seed}, epoch {epoch}")
    print("accuracies and calibration errors in percent (--json gives the stored fractions)")
    print(tabulate(rows, headers=["metric", "value"], disable_numparse=True))
    return 0
