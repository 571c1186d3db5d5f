"""The one training engine: every method trains through the same Ignite trainer.

``train_cell`` reads like a table of contents, as ignite's examples do: build the parts
(:func:`build_training`: device, data, model, method, optimizer and schedule), create the
trainer (:func:`create_trainer`: the update step, per-epoch seeding, timer, NaN check) and the
evaluator (:func:`create_evaluator`), attach the handlers (evaluation on an event filter,
heartbeat, checkpoint with resume, progress), run. The trainer's update step only calls
``method.loss(model, images, labels)``: the engine never branches on a method's name. It
returns after training: the matrix runner then runs the cell's evaluators on the trained
network (:mod:`mixbench.bench.run.evaluate`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, TerminateOnNan, Timer
from torch import nn

from mixbench.bench.evaluators import reliability_diagram_data
from mixbench.bench.train.compute import ComputeCounter
from mixbench.bench.train.machine import machine_boot
from mixbench.config import CellConfig, ScheduleConfig
from mixbench.errors import UsageError
from mixbench.methods import MixMethod, check_supports, get_method
from mixbench.models import create_model
from mixbench.seeding import epoch_seed, global_seed

logger = logging.getLogger("mixbench")

CHECKPOINT_PREFIX = "checkpoint"


class InterruptNoiseFilter(logging.Filter):
    """Drops ignite's "Engine run is terminating due to exception: " line of a Ctrl-C or SIGTERM.

    An interrupt has no message, so the line ends empty (or in ``signal 15``); the matrix
    runner says what happened and how to resume. Lines of real exceptions pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "terminating due to exception:" not in text:
            return True
        reason = text.rsplit("exception:", 1)[1].strip()
        return not (reason == "" or re.fullmatch(r"signal \d+", reason))


_INTERRUPT_NOISE = InterruptNoiseFilter()


def quiet_engine_logger(engine: Engine) -> None:
    """Warnings and errors only, without the interrupt noise (see :class:`InterruptNoiseFilter`).

    Engines share their class's logger, so the one filter is added once.
    """
    engine.logger.setLevel(logging.WARNING)
    if _INTERRUPT_NOISE not in engine.logger.filters:
        engine.logger.addFilter(_INTERRUPT_NOISE)


class CellFailed(RuntimeError):
    """A cell that cannot finish (e.g. its loss became NaN); the matrix goes on without it."""


@dataclass
class CellResult:
    """What one finished cell produced."""

    metrics: dict[str, Any]
    timings: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The trained network, its data and device, for the evaluators that the matrix runner
    #: runs next (not stored).
    backbone: nn.Module | None = field(default=None, repr=False)
    bundle: Any = field(default=None, repr=False)
    device: torch.device | None = None


class TrainingModule(nn.Module):
    """Backbone and method as one module: ``forward(images, labels)`` returns the loss.

    Wrapping both lets DistributedDataParallel see exactly one forward per step, whatever
    the method does with the backbone's stages inside ``loss``.
    """

    def __init__(self, backbone: nn.Module, method: MixMethod) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.method.loss(self.backbone, images, labels)


class RunProgress:
    """Bookkeeping that must survive a resume: evaluation history, time spent, and the
    measured compute (:class:`~mixbench.bench.train.compute.ComputeCounter`, when counting)."""

    def __init__(self, compute: ComputeCounter | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        #: CPU time of this process while training (None: unknown, e.g. resumed from a
        #: checkpoint written before it was measured).
        self.train_cpu_seconds: float | None = 0.0
        self.train_images = 0
        #: The machines that trained the cell, one per machine boot (:func:`machine_boot`),
        #: in the order they first trained an epoch; None: unknown (resumed from a
        #: checkpoint written before they were recorded).
        self.machines: list[str] | None = []
        self.compute = compute

    def note_machine(self, name: str) -> None:
        """Record that machine ``name`` trained an epoch (once per machine)."""
        if self.machines is not None and name not in self.machines:
            self.machines.append(name)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "history": self.history,
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "train_images": self.train_images,
            "machines": self.machines,
        }
        if self.compute is not None:
            state["compute"] = self.compute.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        cpu = state.get("train_cpu_seconds")
        self.train_cpu_seconds = float(cpu) if cpu is not None else None
        self.train_images = int(state["train_images"])
        machines = state.get("machines")
        self.machines = [str(m) for m in machines] if isinstance(machines, list) else None
        if self.compute is not None:
            # A checkpoint written before compute was counted: count from the resume on.
            if "compute" in state:
                self.compute.load_state_dict(state["compute"])
            else:
                self.compute.reset()


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {spec!r} was asked for but no CUDA GPU is available; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {spec!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} GPU(s)"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where supported, fp16 otherwise; None on the CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_optimizer(model: nn.Module, schedule: ScheduleConfig) -> torch.optim.Optimizer:
    """SGD with momentum, optional Nesterov, and weight decay."""
    return torch.optim.SGD(
        model.parameters(),
        lr=schedule.lr,
        momentum=schedule.momentum,
        nesterov=schedule.nesterov and schedule.momentum > 0,
        weight_decay=schedule.weight_decay,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-iteration learning-rate schedule: multistep, cosine, one-cycle or constant."""
    total = max(1, schedule.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler
    if schedule.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=schedule.lr, total_steps=total)
    if schedule.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if schedule.schedule == "multistep":
        milestones = [m * steps_per_epoch for m in schedule.milestones]
        return sched.MultiStepLR(optimizer, milestones=milestones, gamma=schedule.gamma)
    return sched.LambdaLR(optimizer, lambda _: 1.0)


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest epoch in ``folder``, or None."""
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}_*.pt"):
        try:
            found.append((int(path.stem.rsplit("_", 1)[1]), path))
        except ValueError:
            continue
    return max(found)[1] if found else None


class CellKey:
    """The key of the cell a checkpoint belongs to, saved in it (as ``cell``) so that a
    checkpoint copied from another cell is refused (:func:`load_checkpoint`)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.key = str(state["key"])


class PrivateDiskSaver(DiskSaver):
    """ignite's :class:`~ignite.handlers.DiskSaver`, with two changes: a checkpoint is a
    private file (mode ``0600``, written atomically by :func:`mixbench.fileio.write_private`),
    and the checkpoints it supersedes are deleted only once the new one is complete (ignite's
    ``Checkpoint`` asks for the removal before it saves, so a kill in between would leave
    none; and after a resume it does not know the checkpoint resumed from)."""

    def __init__(self, dirname: Path) -> None:
        super().__init__(str(dirname), atomic=True, require_empty=False)
        self._superseded: list[str] = []

    def _save_func(self, checkpoint: Any, path: Path, func: Callable) -> None:
        from mixbench.fileio import write_private

        write_private(path, lambda tmp: func(checkpoint, tmp, **self.kwargs))

    def remove(self, filename: str) -> None:
        self._superseded.append(filename)

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        super().__call__(checkpoint, filename, metadata)
        superseded, self._superseded = self._superseded, []
        if idist.get_rank() == self.save_on_rank:
            for name in superseded:
                (self.dirname / name).unlink(missing_ok=True)
            delete_older_checkpoints(self.dirname, checkpoint_file_epoch(Path(filename)) or 0)


def checkpoint_file_epoch(path: Path) -> int | None:
    """The epoch of ``checkpoint_<epoch>.pt``, or None for another name."""
    prefix, _, epoch = path.stem.rpartition("_")
    if path.suffix != ".pt" or prefix != CHECKPOINT_PREFIX or not epoch.isdigit():
        return None
    return int(epoch)


def delete_older_checkpoints(folder: Path, epoch: int) -> None:
    """Delete the checkpoints in ``folder`` of epochs before ``epoch`` (superseded by its)."""
    for path in folder.glob(f"{CHECKPOINT_PREFIX}_*.pt"):
        found = checkpoint_file_epoch(path)
        if found is not None and found < epoch:
            path.unlink(missing_ok=True)


def _set_aside(path: Path, suffix: str, why: str) -> None:
    """Rename a checkpoint that must not be loaded to ``<name><suffix>``, with a warning."""
    bad = path.with_suffix(".pt" + suffix)
    path.replace(bad)
    warnings.warn(
        f"checkpoint {path} is {why}; moved to {bad.name} and resuming from an older one",
        stacklevel=3,
    )


def load_checkpoint(folder: Path, to_load: dict[str, Any]) -> int:
    """Restore ``to_load`` from the newest readable checkpoint; returns its epoch (0 if none).

    Checkpoints are read with ``weights_only=True``. An unreadable (e.g. truncated) file is
    set aside (``.pt.corrupt``) with a warning and the next older one is tried; so is one that
    belongs to another cell (``.pt.foreign``) when ``to_load`` has the cell's
    :class:`CellKey` under ``cell`` (checkpoints written before keys were stored are loaded).
    """
    marker = to_load.get("cell")
    objects = {k: v for k, v in to_load.items() if k != "cell"}
    while (path := latest_checkpoint(folder)) is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            stored = state.get("cell", {}).get("key") if isinstance(state, dict) else None
            if isinstance(marker, CellKey) and stored is not None and stored != marker.key:
                _set_aside(path, ".foreign", f"of another cell ({stored}, not {marker.key})")
                continue
            Checkpoint.load_objects(to_load=objects, checkpoint=state)
        except Exception as exc:  # a truncated or foreign file: never trust it
            _set_aside(path, ".corrupt", f"unreadable ({type(exc).__name__})")
            continue
        trainer_state = state["trainer"]
        if "epoch" in trainer_state:
            return int(trainer_state["epoch"])
        return int(trainer_state["iteration"]) // max(1, int(trainer_state["epoch_length"] or 1))
    return 0


#: Temporary files of ignite's DiskSaver (``tempfile.NamedTemporaryFile``), left by a kill
#: mid-write in earlier versions.
_IGNITE_TEMPORARY = re.compile(r"tmp[a-z0-9_]{8}")


def clean_cell_folder(folder: Path, resumed_from: int) -> None:
    """Delete what a crash left in a cell's folder: temporary files of interrupted writes,
    and checkpoints older than the one resumed from (epoch ``resumed_from``)."""
    from mixbench.fileio import remove_temporaries

    remove_temporaries(folder)
    for path in folder.iterdir():
        if _IGNITE_TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
    delete_older_checkpoints(folder, resumed_from)


CELL_FILE = "cell.json"


def write_cell_file(workdir: Path, cell: CellConfig) -> None:
    """Save the cell's resolved config beside its checkpoints (``mixbench evaluate`` reads it)."""
    import json

    from mixbench.config import to_dict
    from mixbench.fileio import atomic_write_text

    text = json.dumps(to_dict(cell), indent=2, sort_keys=True)
    atomic_write_text(workdir / CELL_FILE, text, private=True)


@dataclass
class TrainingParts:
    """What one cell trains with: device, data, network, method, optimiser and bookkeeping."""

    cell: CellConfig
    device: torch.device
    rank: int
    world_size: int
    bundle: Any
    train_loader: Any
    test_loader: Any
    backbone: nn.Module
    method: MixMethod
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    channels_last: bool
    progress: RunProgress

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the cell's AMP dtype (nothing on the CPU or with AMP off)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def build_training(cell: CellConfig, bundle_cache: dict[Any, Any] | None = None) -> TrainingParts:
    """Device, data, model (its initial weights from the cell's seed), method, optimiser,
    schedule and bookkeeping of one cell, for this process of the run."""
    from mixbench.bench.train.data import load_bundle, make_loaders

    rank, world_size = idist.get_rank(), idist.get_world_size()
    device = resolve_device(cell.runtime.device)
    if world_size > 1 and device.type == "cuda":
        device = idist.device()
    schedule = cell.training_schedule()

    # Data: the training split lives on the device; batches are augmented there.
    bundle = load_bundle(cell, cache=bundle_cache)
    train_loader, test_loader = make_loaders(bundle, cell, device, rank, world_size)

    backbone = create_model(cell.model, bundle.num_classes, seed=cell.seed, **cell.model_options)
    # channels_last only where it pays off and is safe: on the CPU, torch 2.14's backward of a
    # 1x1 stride-2 convolution in channels_last corrupts memory for narrow networks.
    channels_last = cell.runtime.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    backbone = backbone.to(device, memory_format=memory_format)
    method = get_method(cell.method, **cell.params)
    check_supports(method, backbone, cell.model)  # TransMix on a CNN: one line, nothing trained
    # The data set's per-channel statistics, for methods that work in pixel units.
    method.bind_data(tuple(bundle.mean), tuple(bundle.std))
    module: nn.Module = TrainingModule(backbone, method)
    module = idist.auto_model(module, sync_bn=False) if world_size > 1 else module
    if cell.runtime.compile:
        module = torch.compile(module)

    optimizer = build_optimizer(backbone, schedule)
    scheduler = build_scheduler(optimizer, schedule, len(train_loader))
    autocast_dtype = amp_dtype(device, cell.runtime.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    # Network passes and BatchNorm updates per step, counted by hooks (not under
    # torch.compile, whose graphs would have to break at every hook).
    compute = None if cell.runtime.compile else ComputeCounter(backbone)
    return TrainingParts(
        cell=cell, device=device, rank=rank, world_size=world_size, bundle=bundle,
        train_loader=train_loader, test_loader=test_loader, backbone=backbone, method=method,
        module=module, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        autocast_dtype=autocast_dtype, channels_last=channels_last,
        progress=RunProgress(compute),
    )  # fmt: skip


def create_trainer(parts: TrainingParts) -> Engine:
    """The trainer: each step calls only ``method.loss(model, images, labels)``; every epoch
    reseeds the data order, the method's draws and torch's global generator from (seed,
    epoch, rank); its training time is timed; a NaN loss stops it."""
    cell, device = parts.cell, parts.device
    module, optimizer, scheduler, scaler = (
        parts.module,
        parts.optimizer,
        parts.scheduler,
        parts.scaler,
    )
    compute = parts.progress.compute
    in_step = compute.in_step if compute is not None else contextlib.nullcontext

    def update(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        if parts.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        module.train()
        with parts.autocast(), in_step(images.shape[0]):
            loss = module(images, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if compute is not None:
            compute.step()
        return loss.detach()

    trainer = Engine(update)
    quiet_engine_logger(trainer)

    @trainer.on(Events.EPOCH_STARTED)
    def _set_epoch(engine: Engine) -> None:
        # Every random stream of an epoch is a function of (seed, epoch, rank): data order and
        # augmentation, the method's draws, and torch's global generator (e.g. dropout). A
        # resumed run therefore draws exactly what an uninterrupted one would, on every rank.
        epoch = engine.state.epoch
        parts.train_loader.set_epoch(epoch)
        parts.method.seed(epoch_seed(cell.seed, epoch), parts.rank)
        torch.manual_seed(global_seed(cell.seed, epoch, parts.rank))

    # Timer: training time only (data and step), paused before evaluation runs; on a GPU the
    # queued work is waited for first so that the last steps are counted.
    if device.type == "cuda":
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: torch.cuda.synchronize(device))
    timer = Timer(average=False)
    timer.attach(trainer, start=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED)
    # The process's CPU time over the same span: on a CPU shared with other processes it
    # measures a method's work where wall time also counts the waiting.
    cpu_started = [0.0]
    machine = machine_boot()

    @trainer.on(Events.EPOCH_STARTED)
    def _start_cpu_clock(engine: Engine) -> None:
        cpu_started[0] = time.process_time()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _account(engine: Engine) -> None:
        loader = parts.train_loader
        progress = parts.progress
        if progress.train_cpu_seconds is not None:
            progress.train_cpu_seconds += time.process_time() - cpu_started[0]
        progress.train_seconds += timer.value()
        progress.train_images += len(loader) * loader.batch_size * parts.world_size
        progress.note_machine(machine)

    # Reading the loss synchronises with a GPU: there, check (and show) it every few steps.
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=_loss_every(device)), TerminateOnNan()
    )
    return trainer


def _loss_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else 10


def create_evaluator(parts: TrainingParts) -> tuple[Engine, Callable[[], dict[str, Any]]]:
    """The test-set evaluator (top-1, NLL, calibration) and a function that runs it once on
    the model that is checkpointed and returns its metrics (with ``eval_seconds``)."""
    from mixbench.bench.train.metrics import attach_metrics

    backbone = parts.backbone
    evaluator = Engine(_eval_step(backbone, parts.autocast, parts.channels_last))
    quiet_engine_logger(evaluator)
    attach_metrics(evaluator, parts.bundle.num_classes, parts.cell.eval.calibration_bins)

    def evaluate() -> dict[str, Any]:
        if parts.world_size > 1:
            # Ranks drift apart in BatchNorm statistics during training; every rank evaluates
            # its shard with rank 0's buffers, i.e. exactly the model that is checkpointed.
            for buffer in backbone.buffers():
                torch.distributed.broadcast(buffer, src=0)
        start = time.perf_counter()
        evaluator.run(parts.test_loader)
        metrics = dict(evaluator.state.metrics)
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics

    return evaluator, evaluate


def _evaluated_epochs(schedule: ScheduleConfig) -> Callable[[Engine, int], bool]:
    """An ignite event filter: every ``eval_every``-th epoch and the last one."""
    return lambda _, epoch: epoch % schedule.eval_every == 0 or epoch == schedule.epochs


def attach_checkpoint(trainer: Engine, parts: TrainingParts, workdir: Path) -> dict[str, Any]:
    """Save everything a resume needs, and the cell's key, after every epoch (the newest
    checkpoint only, written atomically and privately by :class:`PrivateDiskSaver`, which
    deletes the previous one after); returns the saved objects, for :func:`load_checkpoint`."""
    to_save = {
        "trainer": trainer,
        "model": parts.backbone,
        "optimizer": parts.optimizer,
        "scheduler": parts.scheduler,
        "method": parts.method,
        "progress": parts.progress,
        "cell": CellKey(parts.cell.key),
    }
    if parts.scaler.is_enabled():
        to_save["scaler"] = parts.scaler
    checkpoint = Checkpoint(
        to_save,
        PrivateDiskSaver(workdir),
        filename_prefix="",
        filename_pattern=CHECKPOINT_PREFIX + "_{global_step}.{ext}",
        global_step_transform=lambda engine, _: engine.state.epoch,
        n_saved=1,
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    return to_save


def attach_progress(trainer: Engine, parts: TrainingParts, metrics: dict[str, Any]) -> None:
    """A progress bar on a terminal, one plain line per epoch (with the test top-1 when
    evaluated) on process 0."""
    cell = parts.cell
    if sys.stderr.isatty():  # elsewhere the epoch lines are the progress
        bar = ProgressBar(
            persist=False,
            desc=f"{cell.method}/{cell.dataset}/{cell.model}/seed{cell.seed}",
        )
        bar.attach(
            trainer,
            output_transform=lambda loss: {"loss": float(loss)},
            event_name=Events.ITERATION_COMPLETED(every=_loss_every(parts.device)),
        )
    # After the bar's own handlers, which close it at the end of an epoch.
    schedule = cell.training_schedule()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _epoch_line, schedule, metrics)


def train_cell(
    cell: CellConfig,
    workdir: Path,
    *,
    heartbeat: Callable[[], None] | None = None,
    bundle_cache: dict[Any, Any] | None = None,
    setup: Callable[[Engine, Engine], None] | None = None,
) -> CellResult:
    """Train one cell, resuming from the newest checkpoint in ``workdir``; the result holds the
    trained network for the evaluators, which the matrix runner runs next.

    ``setup(trainer, evaluator)``, if given, is called once both engines exist, before the
    checkpoint handler is attached: the place to add handlers such as optuna's pruning handler.
    """
    schedule = cell.training_schedule()
    from mixbench.fileio import PRIVATE_DIR_MODE

    workdir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    parts = build_training(cell, bundle_cache)
    trainer = create_trainer(parts)
    evaluator, evaluate = create_evaluator(parts)

    last_metrics: dict[str, Any] = {}

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=_evaluated_epochs(schedule)))
    def _evaluate(engine: Engine) -> None:
        metrics = evaluate()
        last_metrics.clear()
        last_metrics.update(metrics)
        parts.progress.history.append(
            {"epoch": engine.state.epoch, "top1": float(metrics["top1"]),
             "nll": float(metrics["nll"])}
        )  # fmt: skip

    if heartbeat is not None:
        last_beat = [time.monotonic()]

        @trainer.on(Events.ITERATION_COMPLETED)
        def _heartbeat(engine: Engine) -> None:
            if time.monotonic() - last_beat[0] > 30:
                heartbeat()
                last_beat[0] = time.monotonic()

    if setup is not None:
        setup(trainer, evaluator)
    to_save = attach_checkpoint(trainer, parts, workdir)
    if cell.runtime.progress and parts.rank == 0:
        attach_progress(trainer, parts, last_metrics)

    # Rank 0 alone writes in the cell's folder: another rank's temporary file could be taken
    # for a crash's leftover by the clean-up below, and that rank would then fail alone (and
    # the others wait for it forever in the next collective).
    if parts.rank == 0:
        write_cell_file(workdir, cell)
    resumed_from = load_checkpoint(workdir, to_save)
    if parts.rank == 0:
        clean_cell_folder(workdir, resumed_from)
    if resumed_from >= schedule.epochs:
        # Training finished before an interruption; evaluation is all that is left.
        last_metrics.update(evaluate())
    else:
        trainer.run(parts.train_loader, max_epochs=schedule.epochs)
        if trainer.state.epoch < schedule.epochs or not last_metrics:
            raise CellFailed(
                f"training stopped at epoch {trainer.state.epoch} iteration "
                f"{trainer.state.iteration}: the loss became NaN or infinite"
            )

    if parts.progress.compute is not None:
        parts.progress.compute.remove()  # the evaluators run the model too: not training's
    result = _collect_result(last_metrics, parts.progress, resumed_from, schedule)
    result.metrics["data"] = describe_data(parts.bundle)
    result.backbone, result.bundle, result.device = parts.backbone, parts.bundle, parts.device
    return result


def _epoch_line(engine: Engine, schedule: ScheduleConfig, metrics: dict[str, Any]) -> None:
    """One plain line per epoch: the last batch's loss, and the test top-1 when evaluated."""
    epoch = engine.state.epoch
    line = f"epoch {epoch}/{schedule.epochs}: loss {float(engine.state.output):.4f}"
    if metrics and (epoch % schedule.eval_every == 0 or epoch == schedule.epochs):
        line += f", test top-1 {100 * float(metrics['top1']):.2f}%"
    print(line, file=sys.stderr, flush=True)


def describe_data(bundle: Any) -> dict[str, Any]:
    """What a cell trained and was evaluated on, stored with its metrics for the leaderboard."""
    return {
        "name": bundle.display_name,
        "num_classes": bundle.num_classes,
        "image_size": list(bundle.image_size),
        "train_images": len(bundle.train),
        "test_images": len(bundle.test),
    }


def _eval_step(
    model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool
) -> Callable[[Engine, Any], tuple[torch.Tensor, torch.Tensor]]:
    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        model.eval()
        images, labels = batch
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast():
            logits = model(images)
        return logits.float(), labels

    return step


def _collect_result(
    metrics: dict[str, Any], progress: RunProgress, resumed_from: int, schedule: ScheduleConfig
) -> CellResult:
    calibration = metrics.get("calibration", {})
    out: dict[str, Any] = {
        "top1": float(metrics["top1"]),
        "nll": float(metrics["nll"]),
        "ece": float(metrics["ece"]),
        "mce": float(metrics["mce"]),
        "oe": float(metrics["oe"]),
    }
    if "top5" in metrics:
        out["top5"] = float(metrics["top5"])
    if isinstance(calibration, dict) and "bin_counts" in calibration:
        out["reliability"] = reliability_diagram_data(calibration)
    if progress.history:
        best = max(progress.history, key=lambda h: (h["top1"], -h["epoch"]))
        out["best_top1"] = best["top1"]
        out["best_epoch"] = best["epoch"]
    out["history"] = progress.history
    seconds = progress.train_seconds
    timings = {
        "train_seconds": seconds,
        "train_images": progress.train_images,
        "train_images_per_s": progress.train_images / seconds if seconds > 0 else math.nan,
        **(
            {"train_cpu_seconds": progress.train_cpu_seconds}
            if progress.train_cpu_seconds is not None
            else {}
        ),
        "eval_seconds": float(metrics.get("eval_seconds", 0.0)),
        "resumed_from_epoch": resumed_from,
        "train_machines": progress.machines,
        "epochs": schedule.epochs,
    }
    if progress.compute is not None and progress.compute.steps:
        timings["passes_per_step"] = progress.compute.passes_per_step()
        if (bn := progress.compute.bn_updates_per_step()) is not None:
            timings["bn_updates_per_step"] = bn
    return CellResult(metrics=out, timings=timings, history=progress.history)
