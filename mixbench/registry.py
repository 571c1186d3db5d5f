"""One small generic registry, used for methods, models and data sets.

Shaped like timm's registries: a decorator that registers under a name (duplicates refused),
a lookup that answers unknown names with the close matches, ``names()`` with shell-style
wildcards, optional metadata kept beside each entry (``info(name)``), and entry points through
which installed packages add entries without touching mixbench.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from mixbench.errors import UnknownNameError, UsageError
from mixbench.plugins import HOW_TO_LOAD, load_environment_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping filled by a decorator and, lazily, by entry points.

    Args:
        kind: what the entries are ("method", "model", "data set"), used in messages.
        entry_point_group: the ``importlib.metadata`` entry point group whose entries are
            loaded (once, on first use) and registered under the entry point's name.
        validate: called on every entry before it is registered; raises on a bad entry.
        default_info: the metadata of an entry registered without any (an entry point's, for
            instance), made from its name; without it such an entry's info is ``None``.
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        validate: Callable[[str, T], T] | None = None,
        default_info: Callable[[str], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._validate = validate
        self._default_info = default_info
        self._entries: dict[str, T] = {}
        self._info: dict[str, Any] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, info: Any = None) -> Callable[[T], T]:
        """Decorator registering its target under ``name`` (with metadata ``info``, if given);
        a duplicate name is refused."""

        def decorator(obj: T) -> T:
            self.add(name, obj, info)
            return obj

        return decorator

    def add(self, name: str, obj: T, info: Any = None) -> None:
        """Register ``obj`` under ``name`` with metadata ``info``; raises ``ValueError`` if the
        name is taken by another object.

        Registering the same object again (an entry point naming a factory that its module's
        decorator has just registered) keeps the metadata it has unless ``info`` is given.
        """
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '_' or '-'")
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self._validate is not None:
            obj = self._validate(name, obj)
        self._entries[name] = obj
        if info is not None:
            self._info[name] = info

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for tests and plugins that replace themselves)."""
        self._entries.pop(name, None)
        self._info.pop(name, None)

    def _load_entry_points(self) -> None:
        """Import the plugins of ``MIXBENCH_PLUGINS`` (each once) and, once, the entry points."""
        load_environment_plugins()
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the registry
                raise UsageError(
                    f"cannot load {self.kind} {ep.name!r} from entry point {ep.value!r}: {exc}"
                ) from exc
            self.add(ep.name, obj)

    def get(self, name: str) -> T:
        """The entry registered under ``name``; unknown names raise ``UnknownNameError``."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            pass
        valid = sorted(self._entries)
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; valid {self.kind} names: {', '.join(valid)}; "
            f"{HOW_TO_LOAD}"
        )

    def info(self, name: str) -> Any:
        """The metadata registered with ``name`` (else ``default_info(name)``, else ``None``);
        unknown names raise ``UnknownNameError`` with the close matches, as :meth:`get` does."""
        self.get(name)
        if name in self._info:
            return self._info[name]
        return self._default_info(name) if self._default_info is not None else None

    def names(self, filter: str = "*", exclude: str | None = None) -> list[str]:
        """Registered names matching the shell-style ``filter``, minus ``exclude``, sorted."""
        self._load_entry_points()
        found = [n for n in self._entries if fnmatch.fnmatchcase(n, filter)]
        if exclude:
            found = [n for n in found if not fnmatch.fnmatchcase(n, exclude)]
        return sorted(found)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
