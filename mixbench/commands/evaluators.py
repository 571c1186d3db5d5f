"""``mixbench evaluators``: the registered evaluators, as a table or JSON."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--json``."""
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run(args: argparse.Namespace) -> int:
    """List every evaluator with its columns and settings."""
    from tabulate import tabulate

    from mixbench.bench.evaluators import evaluator_info, list_evaluators

    infos = [evaluator_info(name) for name in list_evaluators()]
    if args.json:
        print(json.dumps(infos, indent=2, default=str))
        return 0
    rows = [
        [
            i["name"],
            i["description"],
            ", ".join(c["header"] for c in i["columns"]) or "—",
            ", ".join(f"{k}={s['default']!r}" for k, s in i["settings"].items()) or "—",
        ]
        for i in infos
    ]
    print(tabulate(rows, headers=["evaluator", "description", "columns", "settings (defaults)"]))
    return 0
