"""``StagedNet``: a backbone cut into stem, stages ``1..S``, global average pool and linear head.

The mixup methods reach inside the network at three places: the hidden state after stage ``k``
(manifold mixup), the last feature map before pooling (alignment mixup) and the pooled embedding
(multi-mix). ``StagedNet`` offers exactly these cuts, and ``forward`` is the composition of them,
so that ``forward_from(forward_to(x, k), k)`` runs the same operations as ``forward(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from mixbench.errors import UsageError

__all__ = ["StagedNet", "init_weights", "positive_int_option"]


class StagedNet(nn.Module):
    """A classifier ``head(pool(stage_S(... stage_1(stem(x)))))`` with access to every cut.

    Stage 0 is the input image itself; stage ``k >= 1`` is the output of the stem followed by
    stages ``1..k``. Pre-activation networks put their final BN + ReLU inside the last stage,
    so that :meth:`features` is exactly the map that gets pooled.

    Args:
        stem: the module applied to the image before stage 1.
        stages: the stages, in order (at least one).
        embed_dim: channels of the last stage's output (the pooled embedding's size).
        num_classes: number of outputs of the linear head.
        strides: the spatial strides of the network's down-sampling layers, in order; each
            maps a side of ``n`` pixels to ``ceil(n / s)`` (3x3 convs with padding 1, the
            7x7 stride-2 stem conv with padding 3 and the 3x3 stride-2 max pool with padding 1
            all do). Used by :meth:`final_map_size`.
    """

    #: The smallest square input side (H = W) that the network is meant for.
    min_input_size: ClassVar[int] = 32
    #: Whether :meth:`pool` maps any feature map (b, d, h, w) to what the head reads; False
    #: for a Vision Transformer whose head reads its class token (not part of the map).
    pools_feature_map: ClassVar[bool] = True

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        embed_dim: int,
        num_classes: int,
        strides: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if len(stages) == 0:
            raise ValueError("a StagedNet needs at least one stage")
        if any(int(s) < 1 for s in strides):
            raise ValueError(f"strides must be positive integers, got {tuple(strides)}")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(embed_dim, num_classes)
        self.strides: tuple[int, ...] = tuple(int(s) for s in strides)

    @property
    def num_classes(self) -> int:
        """Number of logits (the head's output size)."""
        return self.head.out_features

    @property
    def embed_dim(self) -> int:
        """Size ``d`` of the pooled embedding (the head's input size)."""
        return self.head.in_features

    @property
    def num_stages(self) -> int:
        """Number of stages ``S``; valid hidden-state indices are ``0..S``."""
        return len(self.stages)

    def final_map_size(self, input_size: int) -> int:
        """Side of the last feature map for a square input of side ``input_size``."""
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        size = input_size
        for s in self.strides:
            size = math.ceil(size / s)
        return size

    def check_input_size(self, input_size: int) -> None:
        """Raise ``UsageError`` if square images of side ``input_size`` are too small."""
        if input_size < self.min_input_size:
            raise UsageError(
                f"{type(self).__name__} needs images of at least {self.min_input_size}x"
                f"{self.min_input_size}, got {input_size}x{input_size}: pick a data set with "
                "larger images or a model made for small ones"
            )

    def _check_stage(self, stage: int) -> int:
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise TypeError(f"stage must be an int, got {type(stage).__name__}")
        if not 0 <= stage <= self.num_stages:
            raise UsageError(
                f"stage {stage} is out of range for a network with {self.num_stages} stages: "
                f"use 0 (the input) to {self.num_stages}"
            )
        return stage

    def forward_to(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Hidden state at ``stage``: ``x`` itself for 0, else the output of stage ``stage``."""
        stage = self._check_stage(stage)
        if stage == 0:
            return x
        h = self.stem(x)
        for block in self.stages[:stage]:
            h = block(h)
        return h

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """Logits from the hidden state ``h`` at ``stage`` (0: the input image)."""
        stage = self._check_stage(stage)
        if stage == 0:
            h = self.stem(h)
        for block in self.stages[stage:]:
            h = block(h)
        return self.head(self.pool(h))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (b, d, h, w), the one that gets pooled."""
        return self.forward_to(x, self.num_stages)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Global average pool of a feature map (b, d, h, w) to embeddings (b, d)."""
        if feats.dim() != 4:
            raise ValueError(f"expected a feature map (b, d, h, w), got shape {tuple(feats.shape)}")
        return feats.mean(dim=(2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled embedding (b, d) of images ``x``."""
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (b, num_classes) of images ``x`` (b, C, H, W)."""
        return self.forward_from(x, 0)


def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise convolutions, batch norms and linear layers of ``module`` in place.

    Convolutions: Kaiming normal, fan-out, ReLU gain ("Delving Deep into Rectifiers", He et
    al., arXiv 1502.01852), no bias. Batch norm: weight 1, bias 0, fresh running statistics.
    Linear: uniform in ``+-1/sqrt(fan_in)``, bias 0. Draws come from ``generator`` when given,
    else from torch's global generator.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(
                m.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def positive_int_option(model: str, key: str, value: object) -> int:
    """``value`` if it is a positive int, else ``UsageError`` naming the model and option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{model}: option {key} must be a positive integer, got {value!r}")
    return value
