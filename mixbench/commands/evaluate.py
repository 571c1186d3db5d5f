"""``mixbench evaluate CHECKPOINT``: every evaluator of the cell's preset on a saved checkpoint."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mixbench.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The checkpoint, and where to evaluate it."""
    p.add_argument("checkpoint", type=Path, help="a checkpoint_<epoch>.pt of a cell")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", help="data root, if it moved since training")


#: Metrics stored as fractions that people read as percentages (as the leaderboard prints them).
PERCENT_METRICS = ("ece", "mce", "oe")


def is_percentage(name: str) -> bool:
    """True for accuracies and calibration errors: stored in [0, 1], printed in percent."""
    return name in PERCENT_METRICS or name.endswith(("top1", "top5"))


def format_value(name: str, value: Any) -> str:
    """A metric as ``mixbench evaluate`` prints it (percentages in percent)."""
    if isinstance(value, float) and math.isfinite(value) and is_percentage(name):
        return f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Print the metrics (with ``--json`` a JSON object with ``metrics`` and ``timings``)."""
    from tabulate import tabulate

    from mixbench.bench.run.evaluate import checkpoint_epoch, load_cell_checkpoint, run_evaluators
    from mixbench.bench.train.data import load_bundle
    from mixbench.bench.train.engine import resolve_device
    from mixbench.models import create_model

    cell, state = load_cell_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    cell.runtime.device = args.device
    if args.data_root:
        cell.runtime.data_root = args.data_root
    bundle = load_bundle(cell)
    backbone = create_model(cell.model, bundle.num_classes, seed=cell.seed, **cell.model_options)
    try:
        backbone.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(
            f"checkpoint {args.checkpoint} does not fit model {cell.model!r}: {first}"
        ) from None
    backbone.to(device)
    report = run_evaluators(backbone, bundle, cell, device, clean=True)
    epoch = checkpoint_epoch(state)
    out = {
        "checkpoint": str(args.checkpoint),
        "key": cell.key,
        "method": cell.method,
        "dataset": cell.dataset,
        "model": cell.model,
        "seed": cell.seed,
        "epoch": epoch,
        "metrics": report.metrics,
        "timings": report.timings,
    }
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    rows = [
        [name, format_value(name, value)]
        for name, value in sorted(report.metrics.items())
        if isinstance(value, (int, float, str)) and not isinstance(value, bool)
    ]
    rows += [[name, f"{value:.2f} s"] for name, value in sorted(report.timings.items())]
    print(f"{cell.method} / {cell.dataset} / {cell.model} / seed {cell.seed}, epoch {epoch}")
    print("accuracies and calibration errors in percent (--json gives the stored fractions)")
    print(tabulate(rows, headers=["metric", "value"], disable_numparse=True))
    return 0
