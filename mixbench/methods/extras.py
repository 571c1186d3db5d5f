"""Optional extras of the methods: which package each provides, and the check that it is there.

A method that needs a package outside mixbench's own dependencies names the extras it needs in
``MixMethod.requires`` (``("saliency",)``). It stays registered and listed without them; the
command line calls :func:`missing_extra_message` for every method of a plan before the first
cell starts, and the functions that need the package raise the same one-line
:class:`~mixbench.errors.UsageError`. The check looks for the module with
:func:`importlib.util.find_spec` and never imports it (importing ``gco`` patches ``numpy``).
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

from mixbench.errors import UsageError

__all__ = ["EXTRAS", "Extra", "extra_available", "missing_extra_message", "require_extra"]


class Extra(NamedTuple):
    """One optional extra: the module it provides and the PyPI package that installs it."""

    module: str
    package: str


#: The optional extras of ``pip install 'mixbench[...]'`` that methods can require.
EXTRAS: dict[str, Extra] = {
    "saliency": Extra("cv2", "opencv-contrib-python-headless"),
    "graphcut": Extra("gco", "gco-wrapper"),
}


def extra_available(extra: str) -> bool:
    """Whether the module of ``extra`` can be imported (found, not imported)."""
    module = EXTRAS[extra].module
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra_message(who: str, requires: tuple[str, ...]) -> str | None:
    """The one-line message for the first extra of ``requires`` that is not installed, or
    ``None`` when all are; ``who`` names what needs it (``"method 'saliencymix'"``)."""
    for extra in requires:
        if extra not in EXTRAS:
            raise ValueError(f"unknown optional extra {extra!r}; known: {', '.join(EXTRAS)}")
        if not extra_available(extra):
            package = EXTRAS[extra].package
            return (
                f"{who} needs the optional extra {extra!r} ({package}): "
                f"pip install 'mixbench[{extra}]'"
            )
    return None


def require_extra(who: str, extra: str) -> None:
    """Raise the one-line :class:`UsageError` when ``extra`` is not installed."""
    message = missing_extra_message(who, (extra,))
    if message is not None:
        raise UsageError(message)
