"""Typed configuration: a benchmark matrix (a preset) and the cells it expands to.

Presets are TOML files shipped in ``mixbench/presets/``; every key maps onto a field of the
dataclasses below and unknown keys are refused. These dataclasses are plain data checked
without the registries; names of methods and evaluators are resolved where the cells are
built (:func:`mixbench.bench.run.cells.build_cells`). A :class:`CellConfig` is one training run
(method x data set x model x seed plus the shared schedule); its ``key`` is the hash of
everything that defines the experiment (the ``runtime`` section, which only says where and
how fast it runs, is left out).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mixbench.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")

#: The largest seed: seeds are stored as 32-bit signed integers (PostgreSQL's ``integer``), and
#: torch, NumPy and Python all accept 0 to 2**31 - 1.
MAX_SEED = 2**31 - 1
#: The longest name of a preset, method, data set, model or parameter set (the store's columns).
MAX_NAME_LENGTH = 200
#: The most calibration bins: more bins than test images leave most of them empty.
MAX_CALIBRATION_BINS = 10_000


def check_seed(seed: Any, where: str) -> int:
    """``seed`` if it is an integer in 0..:data:`MAX_SEED`, else ``UsageError`` naming ``where``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{where}: seed {seed!r} is not an integer in 0..{MAX_SEED} (2**31 - 1)")
    return seed


def check_name(name: Any, where: str) -> str:
    """``name`` if every database accepts it (non-empty text of at most
    :data:`MAX_NAME_LENGTH` characters, no NUL or other control character), else
    ``UsageError`` naming ``where``."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where} must be a non-empty name, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"{where} is {len(name)} characters long; names have at most {MAX_NAME_LENGTH}"
        )
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise UsageError(
            f"{where} {name!r} holds a control character (NUL, newline, ...); use printable text"
        )
    return name


def _finite(value: float, where: str, low: float, *, strict: bool = False) -> None:
    """Refuse a NaN or infinite ``value``, or one below ``low`` (or equal to it if ``strict``)."""
    bad = not math.isfinite(value) or value < low or (strict and value == low)
    if bad:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise UsageError(f"{where} must be a finite number {bound}, got {value}")


@dataclass
class ScheduleConfig:
    """Optimisation shared by every cell of a matrix: SGD and a learning-rate schedule."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    eval_every: int = 1

    def validate(self) -> None:
        """Refuse values that cannot be trained with."""
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        _finite(self.lr, "lr", 0.0, strict=True)
        _finite(self.momentum, "momentum", 0.0)
        _finite(self.weight_decay, "weight_decay", 0.0)
        _finite(self.gamma, "gamma", 0.0, strict=True)
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}"
            )
        if self.eval_every < 1:
            raise UsageError(f"eval_every must be >= 1, got {self.eval_every}")
        if any(m < 1 for m in self.milestones):
            raise UsageError(f"milestones are epochs >= 1, got {self.milestones}")


@dataclass
class EvalConfig:
    """Which evaluators run after training, and their settings (stored with every result).

    ``evaluators`` names what runs, registered evaluators or shell-style patterns of their names
    (``"*"``, the default, runs every registered one; ``mixbench evaluators`` lists them):
    ``calibration`` (ECE, MCE, OE and reliability bins of the full test set), ``fgsm`` and
    ``pgd`` (accuracy under L-infinity attacks in pixel space on ``attack_subset`` test
    images), ``generated_corruptions`` (mixbench's own corruptions made with tensor operations,
    on ``corruption_subset`` test images), ``official_corruptions`` (CIFAR-10-C and kin when
    their files are under the data root; skipped with a note otherwise), ``embedding``
    (alignment and uniformity of ``embedding_subset`` test embeddings) and ``ood``
    (out-of-distribution detection). A subset size of ``None`` means the whole test set;
    subsets are drawn from generators seeded from the cell's seed. An attack setting of
    ``None`` takes the default for the data set's image size: FGSM eps 8/255 and PGD eps 8/255,
    step 2/255 up to 32 pixels, eps 4/255 and step 1/255 on larger images.

    The settings of the evaluators above are this dataclass's fields; an evaluator with its own
    settings dataclass (``ood``, and evaluators of plugins) takes them from ``options``, one
    table per evaluator: ``[eval.options.ood]`` in a preset, ``--set
    eval.options.ood.sets='["DIR"]'`` on the command line.

    Construction checks what needs no registry; evaluator names, patterns, ``options`` tables
    and plug-in corruption names are checked (and ``evaluators`` expanded) by
    :func:`mixbench.bench.run.cells.resolve_eval`, which every cell goes through.
    """

    #: The generated corruptions shipped with mixbench (``mixbench.bench.evaluators``).
    GENERATED: typing.ClassVar[tuple[str, ...]] = (
        "brightness",
        "contrast",
        "gaussian_blur",
        "gaussian_noise",
        "impulse_noise",
        "jpeg",
        "pixelate",
        "shot_noise",
    )

    calibration_bins: int = 15
    evaluators: list[str] = field(default_factory=lambda: ["*"])
    batch_size: int = 256
    attack_subset: int | None = None
    fgsm_eps: float | None = None
    pgd_eps: float | None = None
    pgd_step_size: float | None = None
    pgd_steps: int = 10
    corruption_subset: int | None = None
    generated_corruptions: list[str] = field(default_factory=lambda: list(EvalConfig.GENERATED))
    corruption_severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    official_subset: int | None = None
    corruption_benchmark: str | None = None
    embedding_subset: int | None = 2048
    uniformity_t: float = 2.0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.calibration_bins <= MAX_CALIBRATION_BINS:
            raise UsageError(
                f"eval.calibration_bins must be in 1..{MAX_CALIBRATION_BINS}, "
                f"got {self.calibration_bins}"
            )
        if self.batch_size < 1:
            raise UsageError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        for name in ("attack_subset", "corruption_subset", "official_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"eval.{name} must be >= 1 (or left out for all), got {value}")
        if self.embedding_subset is not None and self.embedding_subset < 2:
            raise UsageError(f"eval.embedding_subset must be >= 2, got {self.embedding_subset}")
        for name in ("fgsm_eps", "pgd_eps"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise UsageError(
                    f"eval.{name} is in [0, 1] pixel units (8/255 = 0.0314), got {value}"
                )
        if self.pgd_step_size is not None and not 0 < self.pgd_step_size <= 1:
            raise UsageError(f"eval.pgd_step_size must be in (0, 1], got {self.pgd_step_size}")
        if self.pgd_steps < 0:
            raise UsageError(f"eval.pgd_steps must be >= 0, got {self.pgd_steps}")
        if not self.corruption_severities or any(
            s not in (1, 2, 3, 4, 5) for s in self.corruption_severities
        ):
            raise UsageError(
                f"eval.corruption_severities must list severities 1 to 5, "
                f"got {self.corruption_severities}"
            )
        if self.uniformity_t <= 0:
            raise UsageError(f"eval.uniformity_t must be > 0, got {self.uniformity_t}")


@dataclass
class RuntimeConfig:
    """Where and how a cell runs; not part of the cell's identity (its key)."""

    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    amp: bool = True
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 2
    progress: bool = True


@dataclass
class CellConfig:
    """One training run: the fully resolved configuration stored with its result."""

    preset: str
    method: str
    params: dict[str, Any]
    dataset: str
    dataset_options: dict[str, Any]
    model: str
    model_options: dict[str, Any]
    seed: int
    schedule: ScheduleConfig
    eval: EvalConfig
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    param_set: str = "default"
    #: Processes that train the cell together (``--nproc-per-node``, ``torchrun``). It changes
    #: the experiment: the global batch is split over them and each mixes within its share.
    processes: int = 1
    #: The method's ``version`` when the cell was made: a change of what a method computes
    #: bumps it, so that a cell computed by older code is never taken for a new one.
    method_version: int = 1
    #: The defaults of the method's parameters declared ``Param(key_default=True)`` (options
    #: added after cells of the method were stored), filled by ``build_cells``: a parameter
    #: whose value equals its entry is left out of :meth:`identity` (see :func:`keyed_params`),
    #: while ``params`` keeps every resolved value.
    key_defaults: dict[str, Any] = field(default_factory=dict)
    #: Train for ``epochs_scale`` times the schedule's epochs (the learning-rate schedule
    #: stretched to match) while staying a row of the schedule's table: the equal-compute
    #: reference, ERM given as many network passes as a method that runs the network twice
    #: per step. Counts in the key from 2 on, as ``processes``.
    epochs_scale: int = 1

    def training_schedule(self) -> ScheduleConfig:
        """The schedule the cell trains by: ``schedule`` with ``epochs_scale`` times its
        epochs (``schedule`` itself, unscaled, is what the cells of its table share)."""
        if self.epochs_scale == 1:
            return self.schedule
        return dataclasses.replace(self.schedule, epochs=self.schedule.epochs * self.epochs_scale)

    def identity(self) -> dict[str, Any]:
        """Everything that defines the experiment (the runtime section left out).

        ``processes``, ``method_version`` and ``epochs_scale`` count only from 2 on,
        ``eval.options`` only when it holds a table, and a parameter listed in
        ``key_defaults`` only when it differs from its default, so the cells made before these
        fields and parameters existed (one scale, one process, version 1, no evaluator options,
        no such option set) keep their keys.
        """
        data = to_dict(self)
        data.pop("runtime")
        data["params"] = keyed_params(data["params"], data.pop("key_defaults"))
        for name in ("processes", "method_version", "epochs_scale"):
            if data[name] == 1:
                data.pop(name)
        if not data["eval"].get("options"):
            data["eval"].pop("options", None)
        return data

    def keyed_params(self) -> dict[str, Any]:
        """``params`` without the parameters at their ``key_defaults``: what the key sees."""
        return keyed_params(self.params, self.key_defaults)

    @property
    def key(self) -> str:
        """A stable 16-hex-digit hash of :meth:`identity`."""
        return config_hash(self.identity())

    def schedule_key(self) -> str:
        """A short hash of what cells of one leaderboard table must share."""
        return table_key(self.identity())


@dataclass
class MatrixConfig:
    """A benchmark matrix: methods x data sets x models x seeds with a shared schedule.

    :func:`mixbench.bench.run.cells.build_cells` expands it into its cells.
    """

    name: str = "custom"
    description: str = ""
    methods: list[str] = field(default_factory=lambda: ["*"])
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    models: list[str] = field(default_factory=lambda: ["preactresnet18"])
    seeds: list[int] = field(default_factory=lambda: [0])
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_set: str = "default"
    include: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        """Refuse what no database or training run can take, before anything runs: the
        schedule's values (:meth:`ScheduleConfig.validate`), seeds outside 0..2**31 - 1, and
        names with control characters or longer than :data:`MAX_NAME_LENGTH` (PostgreSQL
        refuses them where SQLite would store them)."""
        self.schedule.validate()
        where = f"preset {self.name!r}"
        check_name(self.name, "the preset's name")
        check_name(self.param_set, f"{where}: param_set")
        for what in ("methods", "datasets", "models"):
            for name in getattr(self, what):
                check_name(name, f"{where}: {what} entry")
        for seed in self.seeds:
            check_seed(seed, where)
        for i, variant in enumerate(self.variants):
            for seed in variant.get("seeds", []) if isinstance(variant, dict) else []:
                check_seed(seed, f"variant {i + 1} of {where}")
            for key in ("method", "param_set"):
                if isinstance(variant, dict) and isinstance(variant.get(key), str):
                    check_name(variant[key], f"variant {i + 1} of {where}: {key}")


# -- (de)serialisation ------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """A plain JSON-able copy of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def keyed_params(params: dict[str, Any], key_defaults: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` without each parameter whose value equals its entry of ``key_defaults``
    (compared as JSON values): the parameters of a cell's key, and of its leaderboard row."""
    defaults = to_dict(key_defaults or {})
    return {k: v for k, v in params.items() if k not in defaults or to_dict(v) != defaults[k]}


def config_hash(data: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``data``."""
    text = json.dumps(to_dict(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table_key(config: dict[str, Any]) -> str:
    """The hash of what the cells of one table must share: schedule, data and model options,
    evaluator settings, and the number of processes per cell where it is more than one."""
    shared = {
        "schedule": config["schedule"],
        "dataset_options": config["dataset_options"],
        "model_options": config["model_options"],
        "eval": {k: v for k, v in config["eval"].items() if k != "options" or v},
    }
    if int(config.get("processes") or 1) > 1:
        shared["processes"] = int(config["processes"])
    return config_hash(shared)[:8]


def _check_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {value!r}")
        return [_check_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table, got {value!r}")
        return {str(k): copy.deepcopy(v) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
            raise UsageError(f"{where} must be of type {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _check_value(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


# -- presets ----------------------------------------------------------------------------


def list_presets() -> list[str]:
    """Names of the presets shipped with mixbench."""
    folder = resources.files("mixbench") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> MatrixConfig:
    """A shipped preset by name, or a TOML file by path, as a validated :class:`MatrixConfig`."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.exists():
        if not path.is_file():
            raise UsageError(f"preset file {name_or_path!r} does not exist")
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read preset file {name_or_path!r}: {exc.strerror}") from None
        default_name = path.stem
    else:
        names = list_presets()
        if name_or_path not in names:
            import difflib

            close = difflib.get_close_matches(name_or_path, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(
                f"unknown preset {name_or_path!r}{hint}; valid presets: {', '.join(names)}"
            )
        text = (resources.files("mixbench") / "presets" / f"{name_or_path}.toml").read_text()
        default_name = name_or_path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"preset {name_or_path!r} is not valid TOML: {exc}") from None
    data.setdefault("name", default_name)
    return from_dict(MatrixConfig, data, f"preset {default_name!r}")


def load_matrices(name_or_path: str, _chain: tuple[str, ...] = ()) -> list[MatrixConfig]:
    """The matrices of a preset: itself, or the presets it ``include``s (each keeping its name).

    A preset such as ``paper`` that only includes others (``paper-cifar10``, ...) expands to
    their matrices, so that its cells are exactly theirs (same keys, same leaderboard tables).
    A preset that includes itself, directly or through others, is a ``UsageError``.
    """
    matrix = load_preset(name_or_path)
    if not matrix.include:
        return [matrix]
    chain = (*_chain, name_or_path)
    seen = {Path(p).stem for p in chain} | {matrix.name}
    out: list[MatrixConfig] = []
    for part in matrix.include:
        if part == matrix.name:
            raise UsageError(f"preset {matrix.name!r} includes itself")
        if part in chain or Path(part).stem in seen:
            cycle = " -> ".join([*chain, part])
            raise UsageError(f"presets include each other ({cycle}); remove one of the includes")
        out.extend(load_matrices(part, chain))
    return out


def parse_assignment(text: str, option: str) -> tuple[list[str], str]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], "value"); malformed input is a UsageError."""
    if "=" not in text:
        raise UsageError(f"malformed {option} {text!r}: expected KEY=VALUE, e.g. mixup.alpha=0.4")
    lhs, value = text.split("=", 1)
    parts = lhs.strip().split(".")
    if not all(parts) or not value.strip():
        raise UsageError(f"malformed {option} {text!r}: expected KEY=VALUE, e.g. mixup.alpha=0.4")
    return parts, value.strip()


def parse_literal(text: str) -> Any:
    """A TOML literal (number, bool, string, list), falling back to the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


#: Sections whose entries are tables named after a component (a data set, a model, a method,
#: an evaluator): ``--set`` creates a missing one.
_NAMED_TABLES = (["dataset_options"], ["model_options"], ["method_params"], ["eval", "options"])


def apply_setting(matrix: MatrixConfig, text: str) -> None:
    """Apply a ``--set section.key=value`` override (e.g. ``schedule.lr=0.05``) in place."""
    parts, raw = parse_assignment(text, "--set")
    data = to_dict(matrix)
    node = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, dict) and part not in node and parts[:depth] in _NAMED_TABLES:
            node[part] = {}  # a component's options table, checked where it is used
        if not isinstance(node, dict) or part not in node:
            raise UsageError(f"--set {text!r}: no section {part!r} in the preset")
        node = node[part]
    if not isinstance(node, dict):
        raise UsageError(f"--set {text!r}: {'.'.join(parts[:-1])} is not a section")
    node[parts[-1]] = parse_literal(raw)
    updated = from_dict(MatrixConfig, data, "--set")
    for f in dataclasses.fields(MatrixConfig):
        setattr(matrix, f.name, getattr(updated, f.name))
