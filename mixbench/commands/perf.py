"""``mixbench perf``: every speed benchmark, ratios measured in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixbench.commands.options import csv_list


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Which benchmarks, where, how long, and the JSON file."""
    p.add_argument(
        "--json", type=Path, dest="json_path", metavar="FILE", help="also write the results as JSON"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed steps per method; timed rounds of the engine and end_to_end benchmarks",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps or rounds first")
    p.add_argument(
        "--only",
        type=csv_list,
        help="run only these benchmarks: methods, loader, engine, end_to_end, adapters "
        "(comma-separated)",
    )
    p.add_argument(
        "--methods",
        type=csv_list,
        help="the methods benchmark times only these methods (comma-separated; ERM is always "
        "added as the reference; default: every registered method with its extras)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=64,
        help="channels of the first stage of the methods benchmark's PreActResNet-18 (default: "
        "64, the papers' network; the short and long presets train width 16)",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="image folder (train/<class>/ plus val/ or test/, e.g. the CIFAR-10 JPEGs) for the "
        "loader and end_to_end benchmarks (default: synthetic images written as JPEG files)",
    )
    p.add_argument(
        "--threads", type=int, help="torch intra-op threads during the benchmarks (default: as set)"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: check that the benchmarks run (seconds)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the selected benchmarks and print them."""
    from mixbench.bench.perf.suite import run_perf

    run_perf(
        device=args.device,
        only=args.only,
        methods=args.methods,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        data_root=args.data_root,
        quick=args.quick,
        json_path=args.json_path,
        width=args.width,
    )
    return 0
