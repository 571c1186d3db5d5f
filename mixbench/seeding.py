"""Every seed mixbench derives, in one place: from a run's seed to each random stream.

A cell has one seed; each random stream (an epoch's data order, a method's draws, torch's
global generator, an evaluator's subset, a tuning trial's sampler) gets its own seed derived
here, so that streams never overlap, a resumed run redraws exactly what an uninterrupted one
would, and the streams of one part do not depend on which other parts run. The formulas are
fixed: changing one changes every result computed since.
"""

from __future__ import annotations

import hashlib
import zlib

import torch

__all__ = [
    "derive_seed",
    "epoch_seed",
    "generator",
    "global_seed",
    "method_seed",
    "purpose_seed",
    "split_seed",
    "trial_seed",
]

#: Multipliers that spread consecutive seeds far apart (both primes, or Knuth's golden-ratio one).
_PRIME = 1_000_003
_RANK_PRIME = 10_007
_GOLDEN = 2_654_435_761


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (a hash), stable across processes and Python versions."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one training epoch of a cell (the method's draws are seeded from it)."""
    return (int(seed) * _PRIME + int(epoch)) % (2**62)


def global_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of torch's global generator during an epoch (e.g. dropout), per process."""
    return epoch_seed(seed, epoch) * 131 + int(rank)


def method_seed(seed: int, rank: int, device_type: str) -> int:
    """The seed of a method's generator on one device type (a distinct stream per process)."""
    offset = 0 if device_type == "cpu" else 7919
    return (int(seed) * _PRIME + int(rank) * _RANK_PRIME + offset) % (2**63)


def purpose_seed(seed: int, purpose: str) -> int:
    """The seed of a named stream (an evaluator's subset, a corruption's noise) of a cell."""
    return (int(seed) * _GOLDEN + zlib.crc32(purpose.encode())) % 2**63


def split_seed(seed: int, split: str) -> int:
    """The seed of a generated data set's split: ``seed`` for train, another for test."""
    return int(seed) if split == "train" else int(seed) + _PRIME


def trial_seed(seed: int, trial: int) -> int:
    """The seed of a tuning trial's sampler (31 bits, as optuna's samplers take)."""
    return (int(seed) * _PRIME + int(trial)) % (2**31)


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))
