"""Shared fixtures: a tiny smoke matrix, the CLI in-process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting slow small networks down by orders of magnitude when
# several processes share two cores (the multi-process tests); set before torch loads OpenMP,
# and inherited by the subprocesses the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"

# A smoke matrix small enough for unit tests: 256 training images, one epoch.
TINY = [
    "--set", "dataset_options.synthetic.n_train=256",
    "--set", "dataset_options.synthetic.n_test=128",
    "--set", "schedule.batch_size=64",
    "--set", "schedule.eval_every=1",  # the tests look at every epoch's evaluation
    "--epochs", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture
def tiny_args() -> list[str]:
    """Overrides that shrink the smoke preset to seconds."""
    return list(TINY)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run ``python -m mixbench ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "mixbench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


def missing_extra(method: str) -> str | None:
    """The one-line message of a registered method whose optional extra is not installed."""
    from mixbench.methods import METHODS, get_method_class, requirement_message

    if method not in METHODS:
        return None
    return requirement_message(get_method_class(method))


def installed_methods() -> list[str]:
    """The registered methods whose optional extras are installed."""
    from mixbench.methods import list_methods

    return [name for name in list_methods() if missing_extra(name) is None]


def pytest_collection_modifyitems(config, items):
    """Conformance tests over the registry skip a method whose optional extra is missing, with
    the line that says what to install as the reason (CI installs every extra)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        for value in callspec.params.values():
            reason = missing_extra(value) if isinstance(value, str) else None
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
                break
