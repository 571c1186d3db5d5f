"""Checking the types of a data set's options against its factory's annotations, without
loading it (:func:`mixbench.datasets.base.check_dataset_options` uses it)."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixbench.errors import UsageError


def matches_type(tp: Any, value: Any) -> bool:
    """Whether ``value`` (as TOML or the command line gives it) fits annotation ``tp``.

    Unions, ``None``, ``bool``, ``int`` (not a bool), ``float`` (an int too), ``str``, ``Path``
    (a string too), lists and sequences of a type, and dicts are checked; other annotations
    accept anything (the factory checks them).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, (str, Path))
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(matches_type(args[0], v) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def _hints(factory: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # a plug-in's annotations that do not resolve: its factory checks
        return {}


def _type_name(tp: Any) -> str:
    """``int``, ``int | Sequence[int]``: an annotation as the factory's source spells it."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return (
        str(tp).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")
    )


def check_option_types(name: str, factory: Any, options: dict[str, Any]) -> None:
    """Raise ``UsageError`` for an option of data set ``name`` whose value does not fit the
    type its factory declares (``n_train = "many"``)."""
    hints = _hints(factory)
    for key, value in options.items():
        if key in hints and not matches_type(hints[key], value):
            expected = _type_name(hints[key])
            raise UsageError(
                f"data set {name!r}: option {key!r} must be of type {expected}, got {value!r}"
            )
