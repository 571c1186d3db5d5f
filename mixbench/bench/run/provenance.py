"""Where a result came from: software versions, the source commit and the hardware.

Stored with every finished cell (``versions``), so that a leaderboard regenerated later states
the versions, commit and machine of the runs behind it, never those of the machine that
renders it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def source_commit(path: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding mixbench; ``(None, None)`` elsewhere.

    ``dirty`` is true when tracked files differ from the commit. An installed wheel (no git
    checkout around the package) or a machine without git gives ``(None, None)``.
    """
    from mixbench.version import PACKAGE_DIR

    root = path or PACKAGE_DIR.parent
    if not (root / ".git").exists():
        return None, None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware() -> dict[str, Any]:
    """The machine: CPU model, logical CPUs available to this process, torch's threads, GPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpus": cpus,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "gpus": torch.cuda.device_count() if gpu else 0,
    }


def software_versions() -> dict[str, Any]:
    """Versions of mixbench and the libraries that decide its numbers, commit and hardware."""
    import ignite
    import torchvision

    from mixbench.version import __version__

    commit, dirty = source_commit()
    return {
        "mixbench": __version__,
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ignite": ignite.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "hardware": hardware(),
    }
