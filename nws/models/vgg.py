"""VGG-16 with BatchNorm and a single FC head (appendix §4 of seed 001_: the last three FC layers are replaced
by one, to reduce the training workload).

The 13 convs have no bias: BatchNorm follows each of them, so a bias is redundant, and an NWS conv has none
(notes/algorithms.md §1.1). A global average pool before the head makes the net work on 32×32 and 224×224
alike.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet import apply_head, check_common, init_weights, make_head, scaled

CONFIG_16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """`features` (conv3×3+BN+ReLU, 2×2 maxpools), global average pool, `fc`."""

    def __init__(self, config: tuple, num_classes: int, width: float = 1.0, head: str = "linear",
                 head_bias: bool = False, in_channels: int = 3):
        super().__init__()
        check_common(num_classes, width, head)
        self.head_kind = head
        layers: list[nn.Module] = []
        cin = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            cout = scaled(v, width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.fc = make_head(head, cin, num_classes, head_bias)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_head(self.head_kind, self.fc, self.avgpool(self.features(x)))


def vgg16(num_classes: int, width: float = 1.0, **kwargs) -> VGG:
    """VGG-16 (13 convs with BN) + one FC; seed 004_ §5.6, appendix §4 (001_)."""
    return VGG(CONFIG_16, num_classes, width=width, **kwargs)
