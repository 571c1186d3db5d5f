"""The overhead of the torchvision and timm adapters: a wrapped network's training step against
the bare network's (``mixbench perf --only adapters``).

For each backbone (``tv:resnet18``, and with timm ``timm:resnet18``, ``timm:convnext_atto`` and
a 32x32 ViT) the same weights are trained in three ways, interleaved round by round: the bare
library network (``net(x)``), the adapter's forward (what ERM and the input-mixing methods
run) and the adapter's staged path ``forward_from(x, 0)`` (what the methods that reach into
the network run). Each step is forward, cross-entropy, backward and an SGD step on one fixed
batch; the order of the three alternates between rounds. Reported per backbone:
``forward_overhead`` and ``staged_overhead``, the median over rounds of (adapter time / bare
time) - 1; the adapters promise at most 0.02 (``target``, ``meets_target``).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.bench.perf.data import paired_ratio
from mixbench.models import create_model

__all__ = ["BACKBONES", "TARGET", "perf_adapters"]

#: The promised bound of both overheads (a fraction of the bare network's step).
TARGET = 0.02
OVERHEADS = ("forward_overhead", "staged_overhead")

#: The backbones timed, with their options: 32x32 inputs throughout.
BACKBONES: dict[str, dict[str, Any]] = {
    "tv:resnet18": {},
    "timm:resnet18": {},
    "timm:convnext_atto": {},
    "timm:vit_tiny_patch16_224": {"img_size": 32, "patch_size": 4},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_time(
    model: nn.Module, run: Any, images: torch.Tensor, labels: torch.Tensor, steps: int
) -> float:
    """Seconds per training step of ``run(images)`` (forward, loss, backward, SGD step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(run(images), labels).backward()
        optimizer.step()
    _sync(images.device)
    return (time.perf_counter() - start) / steps


def perf_adapters(
    *,
    device: str = "cpu",
    batch_size: int = 64,
    rounds: int = 5,
    warmup: int = 1,
    steps: int = 3,
    backbones: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per backbone: bare, forward and staged seconds per step, and the two overheads (see the
    module docstring). The timm backbones are left out when timm is not installed."""
    dev = torch.device(device)
    chosen = dict(BACKBONES if backbones is None else backbones)
    if importlib.util.find_spec("timm") is None:
        chosen = {k: v for k, v in chosen.items() if not k.startswith("timm:")}
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=g).to(dev)
    labels = torch.randint(10, (batch_size,), generator=g).to(dev)
    for name, options in chosen.items():
        print(f"perf: adapter overhead of {name} ...", file=sys.stderr, flush=True)
        adapted = create_model(name, 10, seed=0, **options).to(dev).train()
        bare = copy.deepcopy(adapted.net)  # the library's own network, same weights
        runs = {
            "bare": (bare, bare),
            "forward": (adapted, adapted),
            "staged": (adapted, functools.partial(adapted.forward_from, stage=0)),
        }
        times: dict[str, list[float]] = {key: [] for key in runs}
        for r in range(warmup + rounds):
            order = list(runs.items())
            for key, (model, run) in order if r % 2 == 0 else order[::-1]:  # alternating
                seconds = _step_time(model, run, images, labels, steps)
                if r >= warmup:
                    times[key].append(seconds)
        out[name] = {
            "bare_s": min(times["bare"]),
            "forward_s": min(times["forward"]),
            "staged_s": min(times["staged"]),
            "forward_overhead": paired_ratio(times["forward"], times["bare"]) - 1.0,
            "staged_overhead": paired_ratio(times["staged"], times["bare"]) - 1.0,
        }
    out["target"] = f"overhead <= {TARGET}"
    overheads = [t[k] for t in out.values() if isinstance(t, dict) for k in OVERHEADS]
    out["meets_target"] = all(o <= TARGET for o in overheads)
    return out
