"""The post-training evaluation suite: every evaluator of a cell's preset, on one trained model.

:func:`run_evaluators` is what the matrix runner calls once a cell has finished training and
what ``mixbench evaluate CHECKPOINT`` calls on a checkpoint (read by
:func:`load_cell_checkpoint`); the code is the same for every method. Which evaluators
run comes from the cell's :class:`~mixbench.config.EvalConfig` (``evaluators``, and
``options`` for evaluators with settings); each is a registered
:class:`~mixbench.bench.evaluators.Evaluator` (``mixbench evaluators`` lists them), run in its
declared order.

Reproducibility: every random draw (the subsets, PGD's random start, the generated noises) comes
from a generator seeded from the cell's seed and the draw's purpose, so evaluating the same
model twice gives the same numbers, and one evaluator's draws do not depend on which others run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixbench.bench.evaluators import (
    EvalContext,
    NormalizedModel,
    get_evaluator,
    list_evaluators,
    reliability_diagram_data,
)
from mixbench.bench.evaluators.base import Heartbeat, resolve_settings
from mixbench.bench.evaluators.runtime import autocast, restored_modes, synchronize
from mixbench.bench.run.cells import resolve_cell, resolve_eval
from mixbench.config import CellConfig
from mixbench.datasets import DatasetBundle
from mixbench.errors import UsageError

__all__ = [
    "EvalReport",
    "clean_metrics",
    "checkpoint_epoch",
    "load_cell_checkpoint",
    "run_evaluators",
]


@dataclass
class EvalReport:
    """What :func:`run_evaluators` measured: metrics to store and seconds spent per evaluator."""

    metrics: dict[str, Any]
    timings: dict[str, float]


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

    from mixbench.bench.train.engine import amp_dtype
    from mixbench.bench.train.metrics import attach_metrics
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
        with torch.no_grad(), autocast(device, dtype):
            logits = backbone(images)
        return logits.float(), labels

    evaluator = Engine(step)
    attach_metrics(evaluator, bundle.num_classes, cell.eval.calibration_bins)
    with restored_modes(backbone):
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
        An :class:`EvalReport`: every evaluator's metrics (``fgsm_top1``, ``pgd_top1``,
        ``corruption_generated_top1``, ``alignment``...), its notes (``<key>_note``: why it
        was skipped), and ``eval_settings``, the resolved settings of each evaluator under its
        name (``attack`` for FGSM and PGD together) with the list of those that ran. Timings:
        ``evaluators_seconds`` (all of it) and ``eval_seconds_<evaluator>``.
    """
    from mixbench.bench.train.engine import amp_dtype

    began = time.perf_counter()
    device = torch.device(device)
    selection = resolve_eval(cell.eval)  # patterns expanded, names and options checked
    wanted = [name for name in list_evaluators() if name in selection.evaluators]
    if cell.dataset_options.get("validation"):
        # A tuning trial: the test split is a validation split carved from the training set,
        # and only the objective (clean top-1) matters there.
        wanted = []
    context = EvalContext(
        backbone=backbone,
        model=NormalizedModel(backbone, bundle.mean, bundle.std).to(device),
        bundle=bundle,
        cell=cell,
        device=device,
        amp_dtype=amp_dtype(device, cell.runtime.amp),
        beat=Heartbeat(heartbeat),
    )
    metrics: dict[str, Any] = {}
    timings: dict[str, float] = {}
    settings: dict[str, Any] = {"evaluators": wanted}

    if clean:
        start = time.perf_counter()
        metrics.update(clean_metrics(backbone, bundle, cell, device, "calibration" in wanted))
        timings["eval_seconds_clean"] = time.perf_counter() - start
        context.beat()
    for name in wanted:
        cls = get_evaluator(name)
        context.settings = resolve_settings(name, selection.options.get(name))
        start = time.perf_counter()
        with context.eval_mode():
            result = cls().run(context)
        synchronize(device)
        metrics.update(result.metrics)
        timings.update(result.timings)
        timings.setdefault(f"eval_seconds_{name}", time.perf_counter() - start)
        if result.settings:
            key = cls.settings_key or name
            settings[key] = {**settings.get(key, {}), **result.settings}
        if result.notes:
            metrics[cls.note_key or f"{name}_note"] = "; ".join(result.notes)
        context.beat()
    metrics["eval_settings"] = settings
    timings["evaluators_seconds"] = time.perf_counter() - began
    return EvalReport(metrics=metrics, timings=timings)


# -- mixbench evaluate --------------------------------------------------------------------


def load_cell_checkpoint(checkpoint: Path) -> tuple[CellConfig, dict[str, Any]]:
    """The cell config (``cell.json`` beside it) and the state of a saved checkpoint.

    Raises ``UsageError`` with a one-line message for a missing or unreadable file.
    """
    from mixbench.bench.train.engine import CELL_FILE
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
    cell = resolve_cell(from_dict(CellConfig, data, CELL_FILE))
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


def checkpoint_epoch(state: dict[str, Any]) -> int | None:
    """The epoch a checkpoint was saved at (from its trainer state), or ``None``."""
    trainer = state.get("trainer")
    if not isinstance(trainer, dict):
        return None
    if "epoch" in trainer:
        return int(trainer["epoch"])
    if "iteration" in trainer and trainer.get("epoch_length"):
        return int(trainer["iteration"]) // int(trainer["epoch_length"])
    return None
