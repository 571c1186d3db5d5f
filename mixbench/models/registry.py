"""The registry of backbones: staged networks (stem, stages ``1..S``, pool, linear head).

``register_model(name)`` registers a factory ``f(num_classes, **options) -> StagedNet``,
``create_model(name, num_classes, **options)`` returns a fresh network, ``list_models()`` the
registered names and ``model_info(name)`` a model's description and options. Installed packages
add models through the entry point group ``mixbench.models``. Names ``tv:<name>`` and
``timm:<name>`` are torchvision and timm networks, wrapped by :mod:`mixbench.models.adapters`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from mixbench.errors import UsageError
from mixbench.models.adapters import SUPPORTED_FAMILIES, build_external, is_external
from mixbench.models.staged import StagedNet
from mixbench.registry import Registry

ModelFactory = Callable[..., StagedNet]


def _check_factory(name: str, factory: Any) -> Any:
    if not callable(factory):
        raise TypeError(f"model {name!r} must be a factory function, got {factory!r}")
    params = inspect.signature(factory).parameters
    if "num_classes" not in params:
        raise TypeError(f"model factory {name!r} must take a num_classes argument")
    return factory


MODELS: Registry[ModelFactory] = Registry("model", "mixbench.models", _check_factory)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a factory ``f(num_classes: int, **options) -> StagedNet``."""
    return MODELS.register(name)


def check_model_name(name: str) -> None:
    """Raise the registry's ``UnknownNameError`` for an unknown model name; ``tv:`` and
    ``timm:`` names are checked when the model is built."""
    if not is_external(name):
        MODELS.get(name)


def external_model_help() -> str:
    """How to name torchvision and timm models, for ``mixbench models``."""
    return (
        "torchvision and timm networks: tv:<name> (torchvision.models.get_model) or "
        "timm:<name> (timm.create_model, pip install 'mixbench[timm]'), built without weights; "
        "options pass through (--set model_options.timm:<name>.img_size=32). Supported: "
        + "; ".join(SUPPORTED_FAMILIES)
    )


def list_models(filter: str = "*", exclude: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style pattern."""
    return MODELS.names(filter, exclude)


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of model ``name`` (all but ``num_classes``) with their defaults;
    empty for a torchvision or timm model, whose options pass through to its library."""
    if is_external(name):
        return {}
    params = inspect.signature(MODELS.get(name)).parameters
    return {
        key: p.default
        for key, p in params.items()
        if key != "num_classes"
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not p.empty
    }


def model_info(name: str) -> dict[str, Any]:
    """Name, one-line description (the factory docstring's first line) and options of a model."""
    if is_external(name):
        library = "torchvision" if name.startswith("tv:") else "timm"
        return {
            "name": name,
            "description": f"{library}'s {name.partition(':')[2]}, wrapped as a staged network",
            "options": {},
        }
    doc = (inspect.getdoc(MODELS.get(name)) or "").strip()
    return {
        "name": name,
        "description": doc.splitlines()[0] if doc else "",
        "options": model_options(name),
    }


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """Convert a string option (from a command line or a config file) to its default's type."""
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        return type(default)(text)
    except ValueError:
        raise UsageError(
            f"model {name!r}: option {key}={value!r} is not a {type(default).__name__}"
        ) from None


def create_model(name: str, num_classes: int, *, seed: int | None = None, **kw: Any) -> StagedNet:
    """A freshly initialised network ``name`` with ``num_classes`` outputs.

    Args:
        name: a registered model name (see :func:`list_models`), or ``tv:<name>`` /
            ``timm:<name>`` for a torchvision / timm network (its options pass through to the
            library's constructor; ``pretrained`` is refused).
        num_classes: number of classes, at least 2.
        seed: if given, the initial weights are drawn from a generator seeded with it, leaving
            torch's global generator untouched; if ``None`` they come from the global one.
        **kw: the model's options (see :func:`model_info`); strings are converted to the
            option's type. Unknown options raise ``UsageError`` listing the valid ones.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if is_external(name):
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return build_external(name, num_classes, **kw)
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    options = model_options(name)
    unknown = sorted(set(kw) - set(options))
    if unknown and not takes_any:
        valid = ", ".join(sorted(options)) or "none"
        raise UsageError(
            f"model {name!r} has no option {', '.join(unknown)}; valid options: {valid}"
        )
    kw = {k: _coerce(name, k, v, options.get(k)) for k, v in kw.items()}
    if seed is None:
        net = factory(num_classes, **kw)
    else:
        # A private copy of the CPU generator state: the draws depend on the seed only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = factory(num_classes, **kw)
    if not isinstance(net, StagedNet):
        raise TypeError(f"model factory {name!r} returned {type(net).__name__}, not a StagedNet")
    return net
