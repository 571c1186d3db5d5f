"""How evaluators run a trained model: autocast, train/eval flags restored, device sync."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["autocast", "restored_modes", "synchronize"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing when ``dtype`` is ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Leave every module's train/eval flag as it was found."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of a GPU (timings then count it); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
