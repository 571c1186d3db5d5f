"""``mixbench datasets``: the registered data sets and what is known about each."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--json``."""
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run(args: argparse.Namespace) -> int:
    """List every data set with its registered info (sizes, benchmark, papers' epochs)."""
    from tabulate import tabulate

    from mixbench.datasets import dataset_info, list_datasets

    infos = [{"name": name, **dataset_info(name).as_dict()} for name in list_datasets()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0

    def fact(value: Any) -> str:
        return "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    rows = [
        [
            i["name"],
            i["display_name"],
            fact(i["num_classes"]),
            fact(i["train_size"]),
            fact(i["test_size"]),
            "x".join(str(v) for v in i["image_size"]) if i["image_size"] else "—",
            (i["corruption_benchmark"] or {}).get("name", "—"),
            fact(i["paper_epochs"]),
            len(i["published"]) or "—",
            ("generated: " if i["generated"] else "") + i["description"],
        ]
        for i in infos
    ]
    headers = ["data set", "name", "classes", "train", "test", "size", "corruptions",
               "paper epochs", "published", "description"]  # fmt: skip
    print(tabulate(rows, headers=headers, disable_numparse=True))
    return 0
