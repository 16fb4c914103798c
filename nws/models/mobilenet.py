"""MobileNetV2 (Sandler et al. 2018) without the classifier's Dropout (appendix §4 of seed 001_: dropout
hindered its accuracy).

Standard inverted-residual config; depthwise convs use groups=channels, so each of their `channels` 3×3
kernels is one NWS group. Channels are `round(c * width)` (at least 1) everywhere, the 1280-wide last conv
included, so a narrow network stays narrow; at width 1 this is the standard network. `stem="cifar"` makes the
first conv stride 1 for 32×32 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet import apply_head, check_common, init_weights, make_head, scaled

STEMS = ("imagenet", "cifar")
# expansion t, output channels c, repeats n, first stride s
CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """1×1 expansion (none when t = 1), 3×3 depthwise, linear 1×1 projection; skip when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_residual = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """`features` (stem, 17 inverted residuals, 1×1 conv to 1280), global average pool, `fc` (no dropout)."""

    def __init__(self, num_classes: int, width: float = 1.0, stem: str = "imagenet", head: str = "linear",
                 head_bias: bool = False, in_channels: int = 3):
        super().__init__()
        check_common(num_classes, width, head)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        self.stem, self.head_kind = stem, head
        cin = scaled(32, width)
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 2 if stem == "imagenet" else 1)]
        for t, c, n, s in CONFIG:
            cout = scaled(c, width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = scaled(1280, width)
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = last
        self.fc = make_head(head, last, num_classes, head_bias)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_head(self.head_kind, self.fc, self.avgpool(self.features(x)))


def mobilenet_v2(num_classes: int, width: float = 1.0, **kwargs) -> MobileNetV2:
    """MobileNetV2 without dropout; seed 004_ §5.6, appendix §4 (001_)."""
    return MobileNetV2(num_classes, width=width, **kwargs)
