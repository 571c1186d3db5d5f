"""The evaluator interface: one registered class per evaluator, one job, ``run(context)``.

An evaluator measures a trained model after training, the same code for every method. It is a
subclass of :class:`Evaluator` registered with :func:`register_evaluator`; it declares

- ``settings``: an optional dataclass of its settings, filled from ``[eval.options.NAME]`` of a
  preset (or ``--set eval.options.NAME.FIELD=VALUE``), typed and checked before any cell runs;
- ``columns``: the leaderboard columns it adds, as :class:`ColumnSpec` (a metric key, a header,
  which direction is better, how to print it, its legend text, an optional plot axis);
- ``run(context) -> EvalResult``: its measurement, given an :class:`EvalContext` (the trained
  model in eval mode, the test data, the device and AMP settings, seeded generators).

The leaderboard's columns, legend and robustness plots are derived from the registered columns,
so an evaluator is one new file. Installed packages add evaluators through the entry point group
``mixbench.evaluators``; ``mixbench evaluators`` lists them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

import mixbench.bench.evaluators.runtime as runtime
from mixbench.errors import UsageError
from mixbench.registry import Registry
from mixbench.seeding import purpose_seed

#: Seconds between two heartbeats of a long evaluation (the results store marks a cell whose
#: worker stops beating as abandoned).
HEARTBEAT_SECONDS = 30.0

#: How a :class:`ColumnSpec` prints a value: ``"pct"`` (a fraction as a percentage, 2
#: decimals), ``"pp"`` (a signed difference of fractions in percentage points), or any format
#: spec of :func:`format` (``".3f"``).
PERCENT, POINTS = "pct", "pp"


@dataclass(frozen=True)
class ColumnSpec:
    """A leaderboard column an evaluator adds.

    Args:
        key: the metric of the cells' results the column shows (mean over seeds; with
            ``fmt="pct"`` the standard deviation is not printed, only the mean).
        header: the column header (``"FGSM (%)"``).
        higher_is_better: which value is marked best in bold; ``None`` marks none.
        fmt: ``"pct"``, ``"pp"`` or a format spec such as ``".3f"``.
        legend: the sentence under the table that says what the column holds (shown when the
            column is); columns that share one sentence give it once, the others ``""``.
        plot: the axis label of the column's panel in the robustness plot (clean top-1 against
            this measure), or ``None`` for no panel.
        optional: shown only when some row of the table has a value; ``False`` shows the column
            (with dashes) in every table.
        position: where the column goes among the others, lower first (the built-in columns
            use 10 to 90; 100, the default, puts it after them and before the cost columns).
        value: computes the column from a leaderboard row (e.g. from its reliability bins)
            instead of the mean of metric ``key``.
    """

    key: str
    header: str
    higher_is_better: bool | None = True
    fmt: str = PERCENT
    legend: str = ""
    plot: str | None = None
    optional: bool = True
    position: float = 100.0
    value: Callable[[Any], float | None] | None = None

    def row_value(self, row: Any) -> float | None:
        """The column's value for a leaderboard row: ``value(row)``, or the mean of ``key``."""
        return self.value(row) if self.value is not None else row.mean(self.key)

    def format(self, value: float | None, dash: str = "—") -> str:
        """``value`` as the column prints it (a dash for none)."""
        if value is None:
            return dash
        if self.fmt == PERCENT:
            return f"{100 * value:.2f}"
        if self.fmt == POINTS:
            return f"{100 * value:+.2f}"
        return format(value, self.fmt)


@dataclass
class EvalResult:
    """What one evaluator measured.

    Args:
        metrics: stored with the cell's metrics (numbers, or JSON-able details beside them).
        timings: seconds of parts of the work, stored with the cell's timings.
        settings: the evaluator's resolved settings (eps, subset sizes...), stored under
            ``metrics["eval_settings"][name]`` for the leaderboard's legend.
        notes: why something was skipped, shown under the table (``"official corruptions
            skipped: ..."``); stored as ``metrics["<name>_note"]`` (one line each, joined).
    """

    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def evaluator_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from the cell's ``seed`` and the draw's ``purpose`` (a name).

    Each purpose gets its own stream, so that the draws of one evaluator do not depend on which
    other evaluators run, or in which order.
    """
    return torch.Generator().manual_seed(purpose_seed(seed, purpose))


class Heartbeat:
    """Calls ``beat`` at most every :data:`HEARTBEAT_SECONDS` (a no-op without one)."""

    def __init__(self, beat: Callable[[], None] | None) -> None:
        self.beat = beat
        self.last = time.monotonic()

    def __call__(self) -> None:
        if self.beat is not None and time.monotonic() - self.last > HEARTBEAT_SECONDS:
            self.beat()
            self.last = time.monotonic()


@dataclass
class EvalContext:
    """What an evaluator is given: the trained model, the data, the cell, where to run.

    Attributes:
        backbone: the trained network (normalised images to logits; a staged network also has
            ``embed``); it is in eval mode, and evaluators leave its flags as they found them.
        model: the backbone behind the data set's normalisation: [0, 1] images to logits.
        bundle: the cell's data set (``test`` split, ``num_classes``, ``image_size``, ``mean``,
            ``std``, ``display_name``).
        cell: the cell's resolved configuration (``seed``, ``eval``, ``runtime.data_root``...).
        info: (a property) what is registered about the cell's data set, a
            :class:`~mixbench.datasets.DatasetInfo` (its official ``corruption_benchmark``,
            ``paper_epochs``, sizes...), with the bundle's ``display_name`` (an ``imagefolder``
            named ``CIFAR-10`` is ``CIFAR-10`` here, its facts stay those of ``imagefolder``).
        device: where the backbone is; amp_dtype: the autocast dtype, or ``None`` for float32.
        settings: this evaluator's settings (an instance of its ``settings`` dataclass), or
            ``None`` for an evaluator without one.
        beat: call it now and then during long work (it keeps the cell's claim alive).
    """

    backbone: nn.Module
    model: nn.Module
    bundle: Any
    cell: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    beat: Callable[[], None] = lambda: None
    settings: Any = None

    @property
    def info(self) -> Any:
        """The cell's data set's :class:`~mixbench.datasets.DatasetInfo`, named as the bundle
        names it; a data set that is not registered gets an info with the display name only."""
        from mixbench.datasets import DATASETS, DatasetInfo, dataset_info

        name = getattr(self.bundle, "display_name", "") or self.cell.dataset
        if self.cell.dataset not in DATASETS:
            return DatasetInfo(display_name=name)
        info = dataset_info(self.cell.dataset)
        return info if info.display_name == name else dataclasses.replace(info, display_name=name)

    @property
    def seed(self) -> int:
        """The cell's seed, from which every draw of an evaluator is derived."""
        return int(self.cell.seed)

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh CPU generator for ``purpose``, seeded from the cell's seed."""
        return evaluator_generator(self.seed, purpose)

    def subset(self, size: int | None, purpose: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``size`` test examples (all for ``None``), drawn with the
        cell's seed for ``purpose``: uint8 (n, C, H, W) unnormalised images on the CPU."""
        from mixbench.bench.evaluators.data import draw_subset, take_examples

        test = self.bundle.test
        chosen = draw_subset(len(test), size, self.generator(purpose))
        return take_examples(test, chosen, self.cell.runtime.num_workers)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`amp_dtype` on :attr:`device` (nothing when it is ``None``)."""
        return runtime.autocast(self.device, self.amp_dtype)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """The backbone in eval mode, every module's train/eval flag restored afterwards."""
        with runtime.restored_modes(self.backbone):
            self.backbone.eval()
            yield


def examples_text(n: Any) -> str:
    """``2,000 test images`` (for legends)."""
    return f"{int(n):,} test image{'s' if int(n) != 1 else ''}"


class Evaluator:
    """Base class of every evaluator: one job, ``run(context) -> EvalResult``.

    Subclasses set ``columns`` (their leaderboard columns), optionally ``settings`` (a dataclass
    type whose instance :meth:`run` finds in ``context.settings``), ``description`` (one line for
    ``mixbench evaluators``) and ``order`` (evaluators run, and their legend sentences appear,
    by increasing order; built-ins use 10 to 60, the default 100 runs after them). ``name`` is
    set by :func:`register_evaluator`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings: ClassVar[type | None] = None
    columns: ClassVar[tuple[ColumnSpec, ...]] = ()
    order: ClassVar[float] = 100.0
    #: Where the resolved settings are stored (``eval_settings[settings_key]``); ``None``: the
    #: evaluator's name. Evaluators that share a key (FGSM and PGD) merge their settings there.
    settings_key: ClassVar[str | None] = None
    #: The metric that holds the evaluator's notes; ``None``: ``"<name>_note"``.
    note_key: ClassVar[str | None] = None

    def run(self, context: EvalContext) -> EvalResult:
        """Measure the trained model of ``context``; the same code for every method."""
        raise NotImplementedError

    def legend(self, settings: list[dict[str, Any]], shown: set[str], table_eval: dict) -> str:
        """The sentence(s) under a leaderboard table for this evaluator's shown columns.

        Args:
            settings: the distinct resolved settings this evaluator stored for the table's
                cells (``metrics["eval_settings"][name]``), for evaluators whose legend states
                them (eps, subsets).
            shown: the headers of the table's columns.
            table_eval: the ``eval`` section of the table's configuration.

        By default the legend texts of the shown columns, joined.
        """
        texts = [c.legend for c in self.columns if c.header in shown and c.legend]
        return " ".join(dict.fromkeys(texts))


def _check_evaluator(name: str, cls: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise TypeError(f"evaluator {name!r} must be an Evaluator subclass, got {cls!r}")
    if cls.run is Evaluator.run:
        raise TypeError(f"evaluator {name!r} does not implement run(context)")
    if cls.settings is not None and not dataclasses.is_dataclass(cls.settings):
        raise TypeError(f"evaluator {name!r}: settings must be a dataclass type")
    for spec in cls.columns:
        if not isinstance(spec, ColumnSpec):
            raise TypeError(f"evaluator {name!r}: columns must be ColumnSpec, got {spec!r}")
    cls.name = name
    return cls


EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator", "mixbench.evaluators", _check_evaluator
)


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator: register an :class:`Evaluator` subclass under ``name``."""
    return EVALUATORS.register(name)


def get_evaluator(name: str) -> type[Evaluator]:
    """The registered evaluator class; unknown names raise an error listing the valid ones."""
    return EVALUATORS.get(name)


def list_evaluators(filter: str = "*") -> list[str]:
    """Registered evaluator names in the order they run (then by name), optionally filtered
    by a shell-style pattern."""
    names = EVALUATORS.names(filter)
    return sorted(names, key=lambda n: (EVALUATORS.get(n).order, n))


def evaluator_columns() -> list[tuple[str, ColumnSpec]]:
    """``(evaluator name, column)`` of every registered evaluator, by column position."""
    found = [(name, spec) for name in list_evaluators() for spec in get_evaluator(name).columns]
    return sorted(found, key=lambda item: item[1].position)


def resolve_settings(name: str, options: dict[str, Any] | None) -> Any:
    """The settings instance of evaluator ``name`` from ``options`` (its ``[eval.options]``
    table), typed and checked; ``None`` for an evaluator without settings."""
    from mixbench.config import from_dict

    cls = get_evaluator(name)
    if cls.settings is None:
        if options:
            raise UsageError(
                f"eval.options.{name}: evaluator {name!r} takes no settings; remove the table"
            )
        return None
    return from_dict(cls.settings, dict(options or {}), f"eval.options.{name}")


def evaluator_info(name: str) -> dict[str, Any]:
    """Name, description, settings (defaults and types) and columns of an evaluator."""
    cls = get_evaluator(name)
    settings = {}
    if cls.settings is not None:
        for f in dataclasses.fields(cls.settings):
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            settings[f.name] = {"default": default, "type": str(f.type)}
    return {
        "name": name,
        "description": cls.description,
        "order": cls.order,
        "settings": settings,
        "columns": [
            {
                "key": c.key,
                "header": c.header,
                "higher_is_better": c.higher_is_better,
                "fmt": c.fmt,
                "plot": c.plot,
            }
            for c in cls.columns
        ],
    }
