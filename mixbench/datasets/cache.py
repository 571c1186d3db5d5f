"""Decode-once cache: a split's decoded uint8 tensors stored as one ``.pt`` file.

A cache file is named by a hash of everything its content depends on (the file list with sizes
and modification times, the class names, the target image size), so a changed folder gets a new
file and a stale one is never read. It lives under ``<root>/.mixbench-cache/``; where the root is
not writable, under ``$XDG_CACHE_HOME/mixbench/`` (default ``~/.cache/mixbench/``) in a folder
named by a hash of the root's absolute path.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mixbench.fileio import atomic_write

CACHE_VERSION = 1
CACHE_DIR_NAME = ".mixbench-cache"


def cache_key(parts: Sequence[object]) -> str:
    """A short hex digest of ``parts`` (JSON-serialisable values)."""
    text = json.dumps([CACHE_VERSION, *parts], separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def file_fingerprint(paths: Sequence[str], root: Path) -> list[list[object]]:
    """``[relative path, size, mtime_ns]`` of every file, in the given order."""
    rows = []
    for path in paths:
        stat = os.stat(path)
        rows.append([os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns])
    return rows


def user_cache_dir(root: Path) -> Path:
    """The fallback cache folder for ``root`` under the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixbench" / cache_key([str(root.resolve())])


def cache_candidates(root: Path, filename: str) -> list[Path]:
    """Where a cache file may be: beside the data first, then in the user's cache folder."""
    return [root / CACHE_DIR_NAME / filename, user_cache_dir(root) / filename]


def load_or_build(
    root: Path, filename: str, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The cached tensors named ``filename`` for ``root``, built and stored on a miss.

    Reading uses ``torch.load(weights_only=True)``; an unreadable file is rebuilt (with a
    warning). Writing is atomic; if neither location is writable the tensors are returned
    uncached, with a warning.
    """
    candidates = cache_candidates(root, filename)
    for path in candidates:
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated or foreign file: rebuild it
                warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=2)
    tensors = build()
    errors = []
    for path in candidates:
        try:
            atomic_write(path, lambda tmp: torch.save(tensors, tmp))
            return tensors
        except OSError as exc:
            errors.append(f"{path.parent}: {exc.strerror or exc}")
    warnings.warn(f"could not write the decoded-image cache ({'; '.join(errors)})", stacklevel=2)
    return tensors
