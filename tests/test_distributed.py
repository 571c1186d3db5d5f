"""One cell on two processes (gloo on the CPU): metrics are those of the whole test set."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch

from mixbench.bench.run.cells import build_cells
from mixbench.bench.run.matrix import _matrix_loop
from mixbench.bench.run.store import DONE, ResultStore, sqlite_url
from mixbench.bench.train.data import load_bundle, make_loaders
from mixbench.config import CellConfig, apply_setting, from_dict, load_preset
from mixbench.models import create_model

from .conftest import TINY, run_cli


@pytest.mark.slow
def test_two_process_cell_metrics_match_single_process_evaluation(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--preset", "smoke", "--methods", "multimix", *TINY,
                   "--set", "dataset_options.synthetic.n_test=130",
                   "--out", str(out), "--nproc-per-node", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    key, metrics, config = (
        sqlite3.connect(out / "results.db")
        .execute("SELECT key, metrics, config FROM cells WHERE status='done'")
        .fetchone()
    )
    metrics = json.loads(metrics)
    # Two processes split the batch and mix within their halves: another experiment, so
    # another key than the same cell on one process.
    assert json.loads(config)["processes"] == 2
    one_process = dataclasses.replace(from_dict(CellConfig, json.loads(config)), processes=1)
    assert key != one_process.key
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


def _native_thread_names() -> list[str]:
    tasks = Path("/proc/self/task")
    return sorted((tasks / t / "comm").read_text().strip() for t in os.listdir(tasks))


def _rank_then_report_threads(local_rank: int, cells, out_dir: Path, report_dir: Path) -> None:
    """One rank of a two-process matrix, then the process group torn down as the launcher does."""
    import ignite.distributed as idist

    _matrix_loop(local_rank, cells, out_dir, sqlite_url(out_dir / "results.db"), False, "w", None)
    idist.finalize()  # what ignite's launcher does when this function returns
    (report_dir / f"rank{local_rank}.json").write_text(json.dumps(_native_thread_names()))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_process_group_threads_are_gone_before_the_process_exits(tmp_path):
    """After a DDP cell, tearing the process group down stops gloo's threads at once.

    A finished cell's DDP wrapper left in reference cycles kept the group alive, so its threads
    were only stopped during the interpreter's exit, which now and then aborted a rank (SIGABRT,
    "terminate called without an active exception") after a cell that had succeeded.
    """
    import ignite.distributed as idist

    from mixbench.bench.run.environment import environment, shared_cpu_environment

    matrix = load_preset("smoke")
    matrix.methods = ["mixup"]
    for setting in ("dataset_options.synthetic.n_train=128", "dataset_options.synthetic.n_test=64",
                    "schedule.batch_size=64", "schedule.epochs=1", "runtime.progress=false",
                    "eval.evaluators=[]"):  # fmt: skip
        apply_setting(matrix, setting)
    cells = build_cells(matrix)
    out, reports = tmp_path / "out", tmp_path / "reports"
    out.mkdir()
    reports.mkdir()
    store = ResultStore(sqlite_url(out / "results.db"))
    store.add_cells(cells)
    store.close()
    with environment(shared_cpu_environment(2)), idist.Parallel("gloo", nproc_per_node=2) as p:
        p.run(_rank_then_report_threads, cells, out, reports)

    for rank in (0, 1):
        threads = json.loads((reports / f"rank{rank}.json").read_text())
        assert not [t for t in threads if "gloo" in t], (rank, threads)
    store = ResultStore(sqlite_url(out / "results.db"))
    assert [r.status for r in store.records()] == [DONE]
    store.close()
