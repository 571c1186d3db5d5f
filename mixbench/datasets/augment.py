"""Pure tensor functions behind the loaders: epoch order, sharding, batched crop/flip, normalising.

Everything random is drawn from a ``torch.Generator`` whose seed is derived from
``(seed, epoch, ...)`` by :func:`derive_seed`, so an epoch's order and augmentation are a function
of those numbers alone: a run resumed at an epoch boundary sees exactly the batches it would
have seen, without any saved loader state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mixbench.seeding import derive_seed


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_order(
    n: int, *, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The sample indices (int64, CPU) that process ``rank`` visits in ``epoch``, in order.

    Training: one permutation of all ``n`` samples per epoch, drawn from ``(seed, epoch)`` and the
    same on every process; under ``world_size > 1`` it is cut to a multiple of ``world_size``
    (fewer than ``world_size`` samples, a different few each epoch, sit the epoch out) and process
    ``rank`` takes every ``world_size``-th entry from position ``rank``, so the shards are
    disjoint and of equal length. Evaluation: ``0 .. n-1`` in order, split into ``world_size``
    contiguous blocks (sizes differ by at most one, ``torch.tensor_split``), block ``rank`` for
    process ``rank``: every sample is evaluated exactly once.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not train:
        return torch.tensor_split(torch.arange(n), world_size)[rank]
    order = torch.randperm(n, generator=seeded_generator(seed, epoch, "order"))
    if world_size > 1:
        order = order[: n - n % world_size][rank::world_size]
    return order


def shard_length(n: int, train: bool, rank: int = 0, world_size: int = 1) -> int:
    """How many indices :func:`epoch_order` gives process ``rank`` (the same every epoch)."""
    if train:
        return n // world_size
    return n // world_size + (1 if rank < n % world_size else 0)


def draw_crop_flip(
    n: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets ``top``, ``left`` in ``[0, 2 * padding]`` and flip flags (bool)."""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
    else:
        flipped = torch.zeros(n, dtype=torch.bool)
    return top, left, flipped


def crop_flip(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flipped: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Zero-pad every image by ``padding``, cut an (H, W) window at ``(top, left)`` of the padded
    image and mirror it horizontally where ``flipped``: one ``gather`` for the whole batch.

    ``images`` (B, C, H, W) of any dtype; ``top``, ``left``, ``flipped`` (B,) on its device.
    Returns a new tensor; ``images`` is left as it is.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    padded_w = w + 2 * padding
    device = images.device
    cols = torch.arange(w, device=device)
    cols = torch.where(flipped.view(b, 1), w - 1 - cols, cols)  # (B, W), mirrored where flipped
    rows = torch.arange(h, device=device).view(1, h, 1) * padded_w  # (1, H, 1) row starts
    corner = (top * padded_w + left).view(b, 1, 1)  # flat position of each window's corner
    flat = (corner + rows + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).view(b, c, h, w)


def normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` (1, C, 1, 1) float32 with ``uint8 * scale - shift`` the normalised
    image, i.e. ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if (std_t <= 0).any():
        raise ValueError(f"std must be positive, got {tuple(std)}")
    return 1.0 / (255.0 * std_t), mean_t / std_t


def normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Float32 normalised images from uint8 (0..255) or floating (0..1) ones."""
    if images.dtype == torch.uint8:
        return torch.addcmul(-shift, images.to(torch.float32), scale)
    return torch.addcmul(-shift, images.to(torch.float32), scale * 255.0)
