"""mixbench: a fair, reproducible benchmark suite for mixup data augmentation."""

from mixbench.version import __version__

__all__ = ["__version__"]
