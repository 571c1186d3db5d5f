"""``mixbench show METHOD --out FILE.png``: draw what a method does to one batch.

The figure (inputs, label weights, hidden states of a small probe network) is drawn by
:mod:`mixbench.show`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixbench.errors import UsageError

if TYPE_CHECKING:
    from mixbench.methods import MixMethod


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The method, the PNG file, and the batch to draw."""
    p.add_argument("method", help="registered method name")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--dataset", default="synthetic", help="data set to draw a batch from")
    p.add_argument("--data-root", help="data root of that data set")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, repeatable",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the batch and the draws")


def parse_params(cls: type[MixMethod], texts: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` words as the method's typed parameters."""
    params: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if key.startswith(f"{cls.name}."):
            key = key[len(cls.name) + 1 :]
        if not sep or not key or not value.strip():
            raise UsageError(f"malformed --param {text!r}: expected KEY=VALUE, e.g. alpha=0.4")
        if key not in cls.params:
            valid = ", ".join(sorted(cls.params)) or "none"
            raise UsageError(
                f"method {cls.name!r} has no parameter {key!r}; its parameters: {valid}"
            )
        params[key] = cls.params[key].parse(key, value)
    return params


#: The probe's network: small and fast, any staged network would do.
PROBE_MODEL = ("preactresnet18", {"width": 16})
#: Examples in the batch that is shown.
BATCH = 8


def run(args: argparse.Namespace) -> int:
    """Draw the figure and print the path of the PNG file."""
    import torch

    from mixbench.bench.evaluators import draw_subset, take_examples
    from mixbench.datasets import create_dataset
    from mixbench.leaderboard.markdown import format_params
    from mixbench.methods import check_requirements, get_method, get_method_class
    from mixbench.models import create_model
    from mixbench.show import save_figure, show_figure

    cls = get_method_class(args.method)
    check_requirements(cls)
    params = parse_params(cls, args.param)
    method = get_method(args.method, **params)
    method.seed(args.seed)
    bundle = create_dataset(args.dataset, args.data_root)
    method.bind_data(tuple(bundle.mean), tuple(bundle.std))
    generator = torch.Generator().manual_seed(args.seed)
    chosen = draw_subset(len(bundle.test), BATCH, generator)
    images, labels = take_examples(bundle.test, chosen)
    name, options = PROBE_MODEL
    net = create_model(name, bundle.num_classes, seed=args.seed, **options)
    title = f"{args.method} ({format_params(method.hparams)}) on {bundle.name}, seed {args.seed}"
    fig = show_figure(
        method,
        net,
        images,
        labels,
        mean=bundle.mean,
        std=bundle.std,
        class_names=bundle.class_names,
        title=title,
    )
    save_figure(fig, Path(args.out))
    print(args.out)
    return 0
