"""ERM: plain empirical risk minimisation with cross-entropy, the baseline of every table.

"Principles of Risk Minimization for Learning Theory" (Vapnik, NeurIPS 1991; no arXiv id).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import MixMethod
from mixbench.methods.functional import cross_entropy
from mixbench.methods.registry import register_method


@register_method("erm")
class ERM(MixMethod):
    """Plain training: ``CE(f(x), Y)``; no parameters, no randomness."""

    description = "Empirical risk minimisation: plain cross-entropy on the clean batch"
    paper = "Vapnik, NeurIPS 1991 (no arXiv id)"
    params = {}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``model(images)`` against ``labels``."""
        return cross_entropy(model(images), labels)
