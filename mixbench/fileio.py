"""Atomic file writes (a reader never sees a half-written file) and the file-permission rule.

The rule: files that hold results or state (the results database, checkpoints and the cell
file beside them, exports, job files) are *private*: readable and writable by their owner
only (``0600``), written through :func:`write_private`. Everything else mixbench writes (the
leaderboard, plots, tables, timing reports, data caches) is created as any file is, with the
mode the umask allows (``0644`` under the usual umask ``022``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: Mode of a private file (see the module docstring), and of a folder made only to hold some.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

#: Temporary files of :func:`atomic_write` are named ``.<name>.<random>.tmp``.
TEMP_SUFFIX = ".tmp"

#: A temporary file older than this in a folder that several processes may write (a run's
#: folder, a data cache) is a leftover of a crash: no write lasts that long.
STALE_TEMPORARY_SECONDS = 3600.0


def _public_mode() -> int:
    """``0666`` less the process's umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None], *, private: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets mode ``0600`` when ``private`` (see the module docstring), else the mode
    the umask allows. A crash leaves at most the temporary file: the next write of ``path``
    deletes those older than :data:`STALE_TEMPORARY_SECONDS` (and :func:`remove_temporaries`
    those of a whole folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path.parent, older_than=STALE_TEMPORARY_SECONDS, name=path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, PRIVATE_FILE_MODE if private else _public_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, write: Callable[[Path], None]) -> None:
    """Write a private file (mode ``0600``) atomically: ``write(tmp)`` fills a temporary file
    beside ``path`` that is then renamed over it. The one helper for results, checkpoints,
    exports and job files."""
    atomic_write(path, write, private=True)


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); mode ``0600`` when ``private``."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), private=private)


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode ``0600`` unless it exists (its folder too, ``0700``
    where it is new); True when it was created."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=PRIVATE_DIR_MODE, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        return False
    return True


def remove_temporaries(
    folder: Path, *, older_than: float = 0.0, name: str | None = None
) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when a process
    died mid-write (``.<name>.<random>.tmp``; only those of the file ``name`` if given),
    those modified more than ``older_than`` seconds ago; returns them. Call it where no other
    process writes at the same time, or with an age that no write lasts."""
    removed = []
    now = time.time()
    pattern = f".{name}.*{TEMP_SUFFIX}" if name is not None else f".*{TEMP_SUFFIX}"
    for path in Path(folder).glob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime >= older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed
