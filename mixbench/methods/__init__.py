"""Training methods (ERM and the mixup family) and their registry.

``register_method(name)`` registers a :class:`MixMethod` subclass, ``get_method(name, **params)``
returns a ready, seeded instance, ``list_methods()`` the registered names. Installed packages add
methods through the entry point group ``mixbench.methods``. The registry lives in
:mod:`mixbench.methods.registry`; the built-in methods register themselves when this package is
imported.
"""

from __future__ import annotations

# Built-in methods register themselves on import.
from mixbench.methods import (  # noqa: F401
    alignmixup,
    comixup,
    cutmix,
    decouplemix,
    dense_multimix,
    erm,
    fmix,
    gridmixup,
    guidedmixup,
    manifold_mixup,
    mixup,
    mixupe,
    multimix,
    puzzlemix,
    regmixup,
    resizemix,
    saliencymix,
    smoothmix,
    transmix,
)
from mixbench.methods.base import (
    MixMethod,
    Param,
    check_requirements,
    check_supports,
    describe,
    requirement_message,
    resolve_params,
)
from mixbench.methods.registry import (
    METHODS,
    default_params,
    get_method,
    get_method_class,
    list_methods,
    method_info,
    register_method,
)

__all__ = [
    "METHODS",
    "MixMethod",
    "Param",
    "check_requirements",
    "check_supports",
    "default_params",
    "describe",
    "get_method",
    "get_method_class",
    "list_methods",
    "method_info",
    "register_method",
    "requirement_message",
    "resolve_params",
]
