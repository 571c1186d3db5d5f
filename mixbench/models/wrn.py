"""Wide residual networks ("Wide Residual Networks", Zagoruyko and Komodakis, arXiv 1605.07146)
for 32x32 images: a 3x3 stem with 16 channels and three stages of pre-activation wide basic
blocks with ``16k, 32k, 64k`` channels and strides 1, 2, 2 (final map 8x8 at 32x32).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.errors import UsageError
from mixbench.models.registry import register_model
from mixbench.models.staged import StagedNet, init_weights, positive_int_option

__all__ = ["WideBlock", "WideResNet", "wrn16_8"]


class WideBlock(nn.Module):
    """Wide basic block: ``BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3`` plus the shortcut.

    When the shape changes, the shortcut is a strided 1x1 convolution of the pre-activated
    input. Dropout sits between the two convolutions, as in the paper; it draws from torch's
    global generator (it is off by default).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for input ``x`` (b, cin, h, w)."""
        a = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.dropout(self.conv1(a))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class WideResNet(StagedNet):
    """Wide ResNet for 32x32 images; the final BN + ReLU ends the last stage."""

    min_input_size = 32


@register_model("wrn16_8")
def wrn16_8(num_classes: int, depth: int = 16, widen: int = 8, dropout: float = 0.0) -> WideResNet:
    """Wide ResNet WRN-depth-widen (default WRN-16-8), three stages; final map 8x8 at 32.

    Args:
        num_classes: number of classes.
        depth: total depth, ``6n + 4`` with ``n`` blocks per stage (16 gives 2 blocks).
        widen: widening factor ``k``; the stages have ``16k, 32k, 64k`` channels.
        dropout: dropout probability between the convolutions of each block.
    """
    depth = positive_int_option("wrn16_8", "depth", depth)
    widen = positive_int_option("wrn16_8", "widen", widen)
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UsageError(
            f"wrn16_8: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UsageError(f"wrn16_8: dropout must be a probability in [0, 1), got {dropout!r}")
    blocks = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    strides = [1, 2, 2]
    stages: list[nn.Module] = []
    cin = 16
    for cout, stride in zip(widths, strides):
        layers = [WideBlock(cin, cout, stride, float(dropout))]
        layers += [WideBlock(cout, cout, 1, float(dropout)) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
        cin = cout
    stages[-1].append(nn.BatchNorm2d(cin))
    stages[-1].append(nn.ReLU())
    stem = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
    net = WideResNet(stem, stages, cin, num_classes, strides=strides)
    init_weights(net)
    return net
