"""The registry of training methods (ERM and the mixup family).

``register_method(name)`` registers a :class:`MixMethod` subclass, ``get_method(name, **params)``
returns a ready, seeded instance, ``list_methods()`` the registered names. Installed packages add
methods through the entry point group ``mixbench.methods``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixbench.methods.base import MixMethod, describe, resolve_params
from mixbench.methods.extras import EXTRAS
from mixbench.registry import Registry


def _check_method(name: str, cls: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, MixMethod)):
        raise TypeError(f"method {name!r} must be a MixMethod subclass, got {cls!r}")
    if getattr(cls, "loss", None) is MixMethod.loss:
        raise TypeError(f"method {name!r} does not implement loss(model, images, labels)")
    version = getattr(cls, "version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TypeError(f"method {name!r} must have an integer version >= 1, got {version!r}")
    requires = getattr(cls, "requires", ())
    if not isinstance(requires, tuple) or any(r not in EXTRAS for r in requires):
        raise TypeError(
            f"method {name!r} must require a tuple of optional extras among "
            f"{', '.join(EXTRAS)}, got {requires!r}"
        )
    cls.name = name
    return cls


METHODS: Registry[type[MixMethod]] = Registry("method", "mixbench.methods", _check_method)


def register_method(name: str) -> Callable[[type[MixMethod]], type[MixMethod]]:
    """Class decorator: register a :class:`MixMethod` subclass under ``name``."""
    return METHODS.register(name)


def get_method_class(name: str) -> type[MixMethod]:
    """The registered class; unknown names raise an error listing the valid ones."""
    return METHODS.get(name)


def get_method(name: str, **params: Any) -> MixMethod:
    """A ready instance of method ``name`` with ``params`` (validated), seeded with seed 0."""
    method = get_method_class(name)(**params)
    method.seed(0)
    return method


def list_methods(filter: str = "*", exclude: str | None = None) -> list[str]:
    """Registered method names, sorted, optionally filtered by a shell-style pattern."""
    return METHODS.names(filter, exclude)


def method_info(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Name, version, description, paper, declared parameters (default and type), named
    parameter sets (such as ``paper``), the optional extras it requires and the forward passes
    of its mixing step: the declared ``forward_passes``, or with ``params`` (validated) those
    of an instance with these parameters (:meth:`MixMethod.passes_per_step`)."""
    cls = get_method_class(name)
    passes = int(getattr(cls, "forward_passes", 1))
    if params is not None:
        passes = int(cls(**params).passes_per_step())
    return {
        "name": name,
        "version": int(cls.version),
        "description": describe(cls),
        "paper": cls.paper,
        "params": {
            key: {"default": p.default, "type": p.type.__name__, "help": p.help}
            | ({"choices": list(p.choices)} if p.choices else {})
            for key, p in cls.params.items()
        },
        "param_sets": {name: dict(values) for name, values in cls.param_sets.items()},
        "changes": {str(v): text for v, text in sorted(cls.changes.items())},
        "requires": list(cls.requires),
        "forward_passes": passes,
    }


def default_params(name: str) -> dict[str, Any]:
    """The method's resolved default parameters."""
    return resolve_params(get_method_class(name), {})
