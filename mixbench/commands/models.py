"""``mixbench models``: the registered models and how to name torchvision and timm ones."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--json``."""
    p.add_argument(
        "--json", action="store_true", help="print a JSON list of the models and their options"
    )


def run(args: argparse.Namespace) -> int:
    """List every registered model with its description and options, then how to name a
    torchvision or timm network."""
    from tabulate import tabulate

    from mixbench.models import external_model_help, list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if args.json:
        print(json.dumps(infos, indent=2, default=repr))
        return 0
    rows = [
        [
            i["name"],
            i["description"],
            ", ".join(f"{k}={v!r}" for k, v in i["options"].items()) or "—",
        ]
        for i in infos
    ]
    print(tabulate(rows, headers=["model", "description", "options (defaults)"]))
    print(f"\n{external_model_help()}")
    return 0
