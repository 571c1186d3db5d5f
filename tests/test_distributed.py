"""One cell on two processes (gloo on the CPU): metrics are those of the whole test set."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from mixbench.bench.data import load_bundle, make_loaders
from mixbench.config import CellConfig, from_dict
from mixbench.models import create_model

from .conftest import TINY, run_cli


@pytest.mark.slow
def test_two_process_cell_metrics_match_single_process_evaluation(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--preset", "smoke", "--methods", "multimix", *TINY,
                   "--set", "dataset_options.synthetic.n_test=130",
                   "--out", str(out), "--nproc-per-node", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    key, metrics = (
        sqlite3.connect(out / "results.db")
        .execute("SELECT key, metrics FROM cells WHERE status='done'")
        .fetchone()
    )
    metrics = json.loads(metrics)
    folder = out / "cells" / key
    (checkpoint,) = folder.glob("checkpoint_*.pt")
    cell = from_dict(CellConfig, json.loads((folder / "cell.json").read_text()))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)

    bundle = load_bundle(cell)
    model = create_model(cell.model, bundle.num_classes, **cell.model_options)
    model.load_state_dict(state["model"])
    model.eval()
    _, test_loader = make_loaders(bundle, cell, torch.device("cpu"))
    correct = total = 0
    nll = 0.0
    with torch.no_grad():
        for images, labels in test_loader:
            logits = model(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
            nll += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    assert total == 130  # an odd split over two ranks: nothing dropped, nothing doubled
    assert metrics["top1"] == correct / total
    assert metrics["nll"] == pytest.approx(nll / total, rel=1e-4)
