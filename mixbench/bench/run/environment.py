"""Environment variables of worker processes: set for a block, and shared CPU cores."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["environment", "shared_cpu_environment"]


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (e.g. while jobs are submitted)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def shared_cpu_environment(processes: int) -> dict[str, str]:
    """OpenMP settings for ``processes`` processes sharing this machine's cores.

    Each gets its share of the cores, and idle threads sleep instead of spinning: spinning
    threads of oversubscribed processes slow a small network's step down by orders of magnitude
    (45 ms against 4 s measured on 2 cores). Explicit settings in the environment win.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, processes))
    return {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
    }
