"""``mixbench methods``: the registered methods, as a table or JSON."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--json``."""
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run(args: argparse.Namespace) -> int:
    """List every method with its description and default parameters."""
    from tabulate import tabulate

    from mixbench.methods import list_methods, method_info

    infos = [method_info(name) for name in list_methods()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    rows = [
        [
            i["name"],
            i["description"],
            ", ".join(f"{k}={p['default']!r}" for k, p in i["params"].items()) or "—",
        ]
        for i in infos
    ]
    print(tabulate(rows, headers=["method", "description", "parameters (defaults)"]))
    return 0
