"""Which machine trains a cell, so that training times are compared within one machine only.

Machines of one kind (the same CPU model name) can differ in speed by a factor of two or
three, more than most methods differ in cost, so a cell's timings are only comparable with
those of cells that trained on the same machine. A cell records the machines of all its
training attempts (:attr:`~mixbench.bench.train.engine.RunProgress.machines`).
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

#: Linux's identifier of the running boot: new at every start of the machine.
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def machine_boot() -> str:
    """A short anonymous name of this machine as booted now: a hash of Linux's boot id, so
    that two cells with the same name trained on one machine with no restart in between;
    where there is no boot id, a hash of the host name (the same machine, possibly restarted)."""
    try:
        raw = "boot:" + BOOT_ID.read_text().strip()
    except OSError:
        raw = "host:" + platform.node()
    return hashlib.sha256(raw.encode()).hexdigest()[:12]
