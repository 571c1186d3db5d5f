"""ResNet-50 in the ImageNet layout ("Deep Residual Learning for Image Recognition", He et al.,
arXiv 1512.03385): a 7x7 stride-2 conv and 3x3 max pool stem, then bottleneck stages of
3, 4, 6, 3 blocks (final map 7x7 at 224x224).

The layers are torchvision's ``resnet50`` (randomly initialised, never downloaded), re-arranged
into ``stem`` / ``stages`` / ``head``.
"""

from __future__ import annotations

from torch import nn

from mixbench.models.registry import register_model
from mixbench.models.staged import StagedNet, init_weights

__all__ = ["ImageNetResNet", "resnet50"]


class ImageNetResNet(StagedNet):
    """A ResNet with the ImageNet stem (total stride 32)."""

    min_input_size = 64


@register_model("resnet50")
def resnet50(num_classes: int) -> ImageNetResNet:
    """ResNet-50, ImageNet layout (7x7/2 conv + max pool stem); final map 7x7 at 224.

    Args:
        num_classes: number of classes.
    """
    from torchvision.models import resnet50 as tv_resnet50  # slow import, only when needed

    tv = tv_resnet50(weights=None)
    stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
    stages = [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
    # stem conv /2, max pool /2, then layer2..layer4 each /2
    net = ImageNetResNet(stem, stages, tv.fc.in_features, num_classes, strides=(2, 2, 2, 2, 2))
    init_weights(net)
    return net
