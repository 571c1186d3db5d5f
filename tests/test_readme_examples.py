"""The README's "Adding an evaluator / a model / a data set" examples, run as written: the code
blocks are read from the README itself, so the documentation cannot drift from what works."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mixbench.bench.evaluators import EVALUATORS
from mixbench.cli import main
from mixbench.datasets import DATASETS
from mixbench.models import MODELS
from mixbench.plugins import PLUGINS_ENV

from .conftest import ROOT


def readme_code(section: str) -> str:
    """The first Python code block of README section ``## <section>``."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"no python block in README section {section!r}"
    return match.group(1)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The three README examples as plugin files, unregistered again afterwards."""
    monkeypatch.setenv(PLUGINS_ENV, "")
    files = {}
    for name, section in [("entropy", "Adding an evaluator"), ("tiny_cnn", "Adding a model"),
                          ("npz", "Adding a data set")]:  # fmt: skip
        files[name] = tmp_path / f"{name}.py"
        files[name].write_text(readme_code(section))
    yield files
    EVALUATORS.remove("entropy")
    MODELS.remove("tiny_cnn")
    DATASETS.remove("npz")


def test_readme_evaluator_model_and_data_set_run_together(plugins, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(
        data / "mine.npz",
        x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(64) % 4,
        x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(32) % 4,
    )
    out = tmp_path / "run"
    args = [
        "run", "--methods", "erm", "--datasets", "npz", "--models", "tiny_cnn",
        "--data-root", str(data), "--set", "dataset_options.npz.file=mine.npz",
        "--set", "model_options.tiny_cnn.width=4", "--set", "schedule.batch_size=32",
        "--set", 'eval.evaluators=["calibration", "entropy"]',
        "--set", "eval.options.entropy.subset=20", "--epochs", "1", "--no-progress",
        "--out", str(out),
    ]  # fmt: skip
    for path in plugins.values():
        args += ["--plugin", str(path)]
    assert main(args) == 0
    board = (out / "LEADERBOARD.md").read_text()
    header = next(line for line in board.splitlines() if line.startswith("| #"))
    assert "| entropy " in header  # the evaluator's column, declared by its ColumnSpec
    assert "entropy: mean entropy of the predicted distribution (nats)." in board
    assert main(["evaluators", "--plugin", str(plugins["entropy"])]) == 0
    assert "mean predictive entropy" in capsys.readouterr().out
