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


def hand_cell_to_exited_process(store, key: str) -> None:
    """Make a running cell's holder a process of this host that has exited (a worker that died)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE cells SET pid = ? WHERE key = ?", (int(proc.stdout), key))


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


#: A tiny Vision Transformer for 32x32 images (timm): the network of the methods that declare
#: they need one (TransMix), where a test otherwise uses a tiny PreActResNet-18.
TINY_VIT = ("timm:vit_tiny_patch16_224", {
    "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2,
})  # fmt: skip


def cnn_methods() -> list[str]:
    """The registered methods that train a CNN: all but those that declare they need a ViT
    (TransMix); the rows of a matrix of CNNs, the others skipped with their reason."""
    from mixbench.methods import get_method, list_methods
    from mixbench.models import create_model

    net = create_model("preactresnet18", 10, width=4)
    return [name for name in list_methods() if get_method(name).supports(net) is None]


def net_for(method: str | None, num_classes: int = 10, seed: int = 0, width: int = 4):
    """A tiny PreActResNet-18 (``width``), or the tiny ViT for a ``method`` that cannot train
    a CNN (the test is skipped with the reason where timm is missing). Training mode."""
    from mixbench.methods import get_method
    from mixbench.models import create_model

    net = create_model("preactresnet18", num_classes, width=width, seed=seed).train()
    if method is None or get_method(method).supports(net) is None:
        return net
    pytest.importorskip("timm", reason=f"{method} needs a ViT: pip install 'mixbench[timm]'")
    name, options = TINY_VIT
    return create_model(name, num_classes, seed=seed, **options).train()


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
