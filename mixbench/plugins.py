"""Plugins: user modules that register methods, models or data sets, loaded by name or path.

``mixbench --plugin MODULE`` (repeatable, on every subcommand) and the environment variable
``MIXBENCH_PLUGINS`` (comma-separated) name modules to import before anything is looked up: a
module importable from the current folder or ``sys.path`` (``mymix``, ``mypkg.methods``), or a
path to a Python file (``./mymix.py``). The registries import them on first use, and the
command line puts its ``--plugin`` modules into the environment, so that every process mixbench
starts (local workers, the ranks of ``--nproc-per-node``) loads them too. Installed packages
need none of this: they declare entry points (``mixbench.methods``, ``mixbench.models``,
``mixbench.datasets``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from mixbench.errors import UsageError

PLUGINS_ENV = "MIXBENCH_PLUGINS"

#: How a user loads a plugin, for messages about names that are not registered.
HOW_TO_LOAD = (
    "to use a method, model or data set of your own module, load it with --plugin MODULE "
    f"or {PLUGINS_ENV}=MODULE"
)

_loaded: set[str] = set()


def plugin_names(text: str | None) -> list[str]:
    """The plugins named in a ``MIXBENCH_PLUGINS`` value (comma-separated, blanks dropped)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _canonical(name: str) -> str:
    """A file plugin's absolute path (so other folders' processes find it); a module's name."""
    return str(Path(name).resolve()) if name.endswith(".py") else name


def load_plugin(name: str) -> None:
    """Import one plugin (a module name or a ``.py`` path) once; failures are one-line errors."""
    name = _canonical(name)
    if name in _loaded:
        return
    _loaded.add(name)
    try:
        if name.endswith(".py"):
            path = Path(name)
            if not path.is_file():
                raise UsageError(f"plugin file {name} does not exist")
            module_name = f"mixbench_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())  # a module beside the user, as `python -m` finds it
            importlib.import_module(name)
    except UsageError:
        _loaded.discard(name)
        raise
    except Exception as exc:
        _loaded.discard(name)
        raise UsageError(
            f"cannot load plugin {name!r}: {type(exc).__name__}: {exc}; name a module importable "
            "from the current folder (mymix) or a Python file (./mymix.py)"
        ) from None


def load_plugins(names: Iterable[str]) -> None:
    """Import each plugin of ``names`` (see :func:`load_plugin`)."""
    for name in names:
        load_plugin(name)


def load_environment_plugins() -> None:
    """Import the plugins that ``MIXBENCH_PLUGINS`` names (the registries call this)."""
    load_plugins(plugin_names(os.environ.get(PLUGINS_ENV)))


def export_plugins(names: Iterable[str]) -> None:
    """Add ``names`` to ``MIXBENCH_PLUGINS`` of this process (inherited by its children)."""
    current = plugin_names(os.environ.get(PLUGINS_ENV))
    for name in names:
        name = _canonical(name)
        if name not in current:
            current.append(name)
    if current:
        os.environ[PLUGINS_ENV] = ",".join(current)
