"""mixbench: a fair, reproducible benchmark suite for mixup data augmentation."""

__version__ = "0.1.0"
