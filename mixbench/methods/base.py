"""The method interface: ``MixMethod``, its typed parameter declarations, and its generators."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods.extras import missing_extra_message
from mixbench.seeding import method_seed

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One declared hyper-parameter of a method: default, type and allowed values.

    The CLI validates ``--param method.key=value`` through :meth:`parse`, the leaderboard
    prints the resolved values, and the tuner reads ``search`` (an optuna-style space:
    ``("float", low, high, log)``, ``("int", low, high, log)`` or ``("categorical", choices)``).

    ``key_default=True`` marks a parameter that is left out of a cell's key (and of the
    leaderboard's parameter text) while it holds its default: an option added to a method
    after cells of it were stored, such as the decoupled loss, so that those cells keep their
    keys and results while a cell that sets the option gets a key of its own. The stored
    config still holds the full resolved parameters. Changing the default of such a parameter
    changes what the method computes, so it also bumps the method's ``version``.
    """

    default: Any
    type: type
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    search: tuple[Any, ...] | None = None
    key_default: bool = False

    def parse(self, name: str, value: Any) -> Any:
        """Convert ``value`` (a string from the command line, or a value) and check it."""
        try:
            if isinstance(value, str) and self.type is not str:
                text = value.strip()
                if self.type is bool:
                    if text.lower() not in _TRUE | _FALSE:
                        raise ValueError(text)
                    out: Any = text.lower() in _TRUE
                elif self.type is int:
                    out = int(text)
                elif self.type is float:
                    out = float(text)
                elif self.type is tuple:
                    out = tuple(
                        int(t) for t in text.strip("()[] ").replace(";", ",").split(",") if t
                    )
                else:
                    out = self.type(text)
            elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
                out = float(value)
            elif self.type is tuple and isinstance(value, list):
                out = tuple(value)
            else:
                out = value
            if self.type is int and isinstance(out, float) and out.is_integer():
                out = int(out)
            if not isinstance(out, self.type) or (self.type is not bool and isinstance(out, bool)):
                raise ValueError(repr(value))
        except ValueError:
            raise UsageError(
                f"parameter {name!r} must be of type {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise UsageError(f"parameter {name!r} must be one of {allowed}, got {out!r}")
        if self.minimum is not None:
            too_low = out <= self.minimum if self.exclusive_minimum else out < self.minimum
            if too_low:
                op = ">" if self.exclusive_minimum else ">="
                raise UsageError(f"parameter {name!r} must be {op} {self.minimum}, got {out!r}")
        if self.maximum is not None and out > self.maximum:
            raise UsageError(f"parameter {name!r} must be <= {self.maximum}, got {out!r}")
        return out


def concentration_param(
    default: float, help: str, search: tuple[float, float] | None = (0.1, 4.0)
) -> Param:
    """A Beta or Dirichlet concentration: a float > 0, searched on a log scale.

    Most methods draw their mixing ratio from Beta(alpha, alpha) (or a Dirichlet); only the
    default, the help text and, for a few, the searched range differ. ``search=None`` declares
    a concentration the tuner leaves alone.
    """
    space = None if search is None else ("float", search[0], search[1], True)
    return Param(default, float, help, minimum=0.0, exclusive_minimum=True, search=space)


def probability_param(default: float, help: str, searched: bool = True) -> Param:
    """A probability in [0, 1], such as the chance that a mini-batch is mixed at all.

    ``searched=False`` declares one the tuner leaves alone.
    """
    space = ("float", 0.0, 1.0, False) if searched else None
    return Param(default, float, help, minimum=0.0, maximum=1.0, search=space)


class MixMethod:
    """Base class of every training method: one job, ``loss(model, images, labels)``.

    Subclasses declare ``params`` (name -> :class:`Param`), a one-line ``description``, the
    ``paper`` they implement, named ``param_sets`` (e.g. ``paper``) and a ``version`` (bump it
    when what the method computes changes); all are optional for methods from outside
    packages (the docstring's first line then serves as description). Resolved parameters
    are attributes of the instance and are listed in ``hparams``; a parameter named ``loss``
    is the attribute ``loss_kind`` (``loss`` is the method). ``requires`` names the
    optional extras (``pip install 'mixbench[saliency]'``) the method needs; without them it
    stays registered and :func:`check_requirements` says what to install.

    :meth:`bind_data` receives the data set's per-channel mean and std once per cell, before
    training, for methods that work in pixel units; the base class ignores them.

    Randomness: every draw goes through :meth:`generator`, which returns a ``torch.Generator``
    on the requested device, seeded from the run's seed (0 until :meth:`seed` is called). The
    engine reseeds each method from the cell's seed and process rank, and checkpoints
    :meth:`state_dict` so that a resumed run draws exactly what an uninterrupted one would.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    param_sets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Bumped whenever what the method computes changes (a fix, a new default): the version is
    #: part of every cell's key from 2 on, so a rerun never skips a cell of older code and
    #: the leaderboard never pools versions.
    version: ClassVar[int] = 1
    #: What each version changed (version -> one sentence), shown under leaderboard tables
    #: that hold cells of an older version.
    changes: ClassVar[dict[int, str]] = {}
    #: Optional extras the method needs (names of ``mixbench[...]`` extras, e.g.
    #: ``("saliency",)``); checked by :func:`check_requirements`.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Full forward passes of the backbone per mixing step (a saliency pass counts, also in
    #: eval mode) under the default parameters; the engine measures the real count of every
    #: cell, tests check it is :meth:`passes_per_step` (this, unless parameters change it).
    forward_passes: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        self.hparams = resolve_params(type(self), params)
        for key, value in self.hparams.items():
            # A "loss" attribute would hide the method of that name.
            setattr(self, "loss_kind" if key == "loss" else key, value)
        self._generators: dict[str, torch.Generator] = {}
        self._seed = 0
        self._rank = 0

    # -- randomness ---------------------------------------------------------------------
    def seed(self, seed: int, rank: int = 0) -> None:
        """Reseed all generators from ``seed`` (and the process ``rank`` under DDP)."""
        self._seed = int(seed)
        self._rank = int(rank)
        self._generators.clear()

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The method's generator on ``device`` (created and seeded on first use)."""
        device = torch.device(device)
        key = device.type if device.index is None else f"{device.type}:{device.index}"
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            # A distinct, fixed stream per (seed, rank, device type).
            gen.manual_seed(method_seed(self._seed, self._rank, device.type))
            self._generators[key] = gen
        return gen

    def state_dict(self) -> dict[str, Any]:
        """Seed, rank and generator states as tensors (loads with ``weights_only=True``)."""
        return {
            "seed": self._seed,
            "rank": self._rank,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seed(int(state["seed"]), int(state["rank"]))
        for key, gen_state in state["generators"].items():
            self.generator(key).set_state(gen_state)

    # -- data statistics ----------------------------------------------------------------
    def bind_data(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Receive the training data's per-channel ``mean`` and ``std`` (in [0, 1] pixel
        units): the engine calls this once per cell before the first step. A no-op here;
        methods that need pixel values (``x * std + mean``) override it."""

    # -- declared compute ---------------------------------------------------------------
    def passes_per_step(self) -> int:
        """Full forward passes of the backbone on a mixing step under this instance's resolved
        parameters: the class's ``forward_passes``, unless a method's parameters change it
        (a variant with a saliency pass overrides this). What the engine's count should read."""
        return int(type(self).forward_passes)

    def bn_updates_per_step(self) -> int:
        """How many of those passes run in training mode and so update batch-norm statistics:
        all of them, unless a method runs one in eval mode (an eval-mode saliency pass)."""
        return self.passes_per_step()

    # -- the backbones it can train -----------------------------------------------------
    def supports(self, model: nn.Module) -> str | None:
        """``None`` when the method can train ``model``, else the one-line reason it cannot
        (a method that needs a Vision Transformer, or one that pools a mixed feature map on a
        ViT that reads its class token). The command line skips such cells with the reason;
        the engine refuses them. Every model here by default."""
        return None

    # -- the one job --------------------------------------------------------------------
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one mini-batch: a differentiable scalar.

        ``model(images)`` returns logits; mixbench's own models are staged backbones
        (:class:`mixbench.models.StagedNet`) that also expose their hidden states.
        ``images`` and ``labels`` are left untouched.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def resolve_params(cls: type[MixMethod], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults of ``cls.params`` updated with ``given``, each value parsed and checked."""
    declared = cls.params
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(sorted(declared)) or "none"
        raise UsageError(
            f"method {cls.name or cls.__name__!r} has no parameter {unknown[0]!r}; "
            f"its parameters: {valid}"
        )
    resolved = {key: p.default for key, p in declared.items()}
    for key, value in given.items():
        resolved[key] = declared[key].parse(key, value)
    return resolved


def check_supports(method: MixMethod, model: nn.Module, model_name: str = "") -> None:
    """Raise a one-line :class:`UsageError` when ``method`` cannot train ``model``."""
    reason = method.supports(model)
    if reason is not None:
        name = model_name or type(model).__name__
        method_name = type(method).name or type(method).__name__
        raise UsageError(f"method {method_name!r} cannot train model {name!r}: {reason}")


def describe(cls: type[MixMethod]) -> str:
    """The method's one-line description (its docstring's first line if it declares none)."""
    if cls.description:
        return cls.description
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def check_requirements(method_or_class: MixMethod | type[MixMethod]) -> None:
    """Raise a one-line :class:`UsageError` naming the extra to install when an optional
    extra in the method's ``requires`` is missing, for example ``method 'saliencymix' needs
    the optional extra 'saliency' (opencv-contrib-python-headless): pip install
    'mixbench[saliency]'``. The packages are looked for, never imported."""
    message = requirement_message(method_or_class)
    if message is not None:
        raise UsageError(message)


def requirement_message(method_or_class: MixMethod | type[MixMethod]) -> str | None:
    """What :func:`check_requirements` would raise, or ``None`` when nothing is missing."""
    cls = method_or_class if isinstance(method_or_class, type) else type(method_or_class)
    requires = tuple(getattr(cls, "requires", ()) or ())
    return missing_extra_message(f"method {cls.name or cls.__name__!r}", requires)
