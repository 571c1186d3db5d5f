"""PreActResNet-18 for small images ("Identity Mappings in Deep Residual Networks",
He et al., arXiv 1603.05027), in the CIFAR layout used by manifold mixup and AlignMixup:
a 3x3 stride-1 stem without max pool, four stages of two pre-activation basic blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.models.registry import register_model
from mixbench.models.staged import StagedNet, init_weights, positive_int_option

__all__ = ["PreActBlock", "PreActResNet", "preactresnet18"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(relu(bn(conv(relu(bn(x))))))``.

    When the shape changes, the shortcut is a strided 1x1 convolution applied to the
    pre-activated input, as in the paper's full pre-activation unit.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for input ``x`` (b, cin, h, w)."""
        a = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet(StagedNet):
    """Pre-activation ResNet for 32x32 and 64x64 images; the final BN + ReLU ends stage S."""

    min_input_size = 32


def _stage(cin: int, cout: int, blocks: int, stride: int) -> list[nn.Module]:
    layers: list[nn.Module] = [PreActBlock(cin, cout, stride)]
    layers += [PreActBlock(cout, cout) for _ in range(blocks - 1)]
    return layers


@register_model("preactresnet18")
def preactresnet18(num_classes: int, width: int = 64) -> PreActResNet:
    """PreActResNet-18, CIFAR stem (3x3 stride 1, no max pool); final map 4x4 at 32, 8x8 at 64.

    Args:
        num_classes: number of classes.
        width: channels of stage 1; stages have ``width * (1, 2, 4, 8)`` channels.
    """
    width = positive_int_option("preactresnet18", "width", width)
    widths = [width, 2 * width, 4 * width, 8 * width]
    strides = [1, 2, 2, 2]
    stages: list[nn.Module] = []
    cin = width
    for cout, stride in zip(widths, strides):
        stages.append(nn.Sequential(*_stage(cin, cout, 2, stride)))
        cin = cout
    # Pre-activation nets end with BN + ReLU; it belongs to the last stage so that
    # features() is what gets pooled.
    stages[-1].append(nn.BatchNorm2d(cin))
    stages[-1].append(nn.ReLU())
    stem = _conv3x3(3, width)
    net = PreActResNet(stem, stages, cin, num_classes, strides=strides)
    init_weights(net)
    return net
