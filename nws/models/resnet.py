"""ResNet-18/34 (BasicBlock) as plain float networks that `nws.convert` turns into NWS networks.

Seed 004_ §4.3: NWS replaces every convolution (shortcuts included) by an NWS layer and the last fully
connected layer by a 1×1 convolution; `head="linear"` without bias is the same map (a Linear over the pooled
features), and `head="conv"` is the official form. The `nws` stem is the official NWS ResNet-18 (7×7/2, no
maxpool), used for ImageNet and CIFAR alike (notes/algorithms.md §1.2). Only Conv2d, Linear, BatchNorm2d, ReLU
and pooling are used, so that a generic converter finds every layer that needs a pool. The head and init
helpers here are shared with vgg.py and mobilenet.py.
"""

from __future__ import annotations

import torch
from torch import nn

STEMS = ("imagenet", "nws", "cifar")
HEADS = ("linear", "conv")


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def check_common(num_classes: int, width: float, head: str) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def make_head(kind: str, in_features: int, num_classes: int, bias: bool) -> nn.Module:
    """The classifier over pooled features: Linear or the official 1×1 conv (same map, same kernel count)."""
    if kind == "conv":
        return nn.Conv2d(in_features, num_classes, kernel_size=1, bias=bias)
    return nn.Linear(in_features, num_classes, bias=bias)


def apply_head(kind: str, fc: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """Apply `fc` to features of shape (N, C, 1, 1), returning logits (N, classes)."""
    if kind == "conv":
        return torch.flatten(fc(pooled), 1)
    return fc(torch.flatten(pooled, 1))


def replace_head(net: nn.Module, num_classes: int) -> nn.Module:
    """Swap `net.fc` for a freshly initialised head with `num_classes` outputs, of the same kind and bias
    setting, on the old head's device and dtype (a new head per task in the incremental stage).
    Returns the new head."""
    old = net.fc
    bias = getattr(old, "bias", None) is not None
    ref = next(old.parameters(), None)
    fc = make_head(net.head_kind, net.num_features, num_classes, bias)
    if ref is not None:
        fc = fc.to(device=ref.device, dtype=ref.dtype)
    net.fc = fc
    return fc


def init_weights(net: nn.Module) -> None:
    """He init (fan_out) for convs, BN weight 1 bias 0, Linear left at torch's default."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN; the shortcut is a 1×1 conv (stride) + BN when the shape changes, else empty."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages of BasicBlocks (64/128/256/512 × width, strides 1/2/2/2), global avg pool, `fc`."""

    def __init__(self, blocks: list[int], num_classes: int, stem: str = "nws", width: float = 1.0,
                 head: str = "linear", head_bias: bool = False, in_channels: int = 3):
        super().__init__()
        check_common(num_classes, width, head)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        self.stem, self.head_kind = stem, head
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        self.conv1, self.bn1 = conv_bn(in_channels, widths[0], kernel, stride)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1) if stem == "imagenet" else nn.Identity()
        cin = widths[0]
        for i, (cout, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        self.fc = make_head(head, cin, num_classes, head_bias)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return apply_head(self.head_kind, self.fc, self.avgpool(x))


def resnet18(num_classes: int, stem: str = "nws", width: float = 1.0, **kwargs) -> ResNet:
    """ResNet-18 ([2,2,2,2]); the network of Split-CIFAR-100 and CUB-to-Sketches in seed 004_."""
    return ResNet([2, 2, 2, 2], num_classes, stem=stem, width=width, **kwargs)


def resnet34(num_classes: int, stem: str = "nws", width: float = 1.0, **kwargs) -> ResNet:
    """ResNet-34 ([3,4,6,3]); seed 004_ §5.6 and appendix §4 (001_)."""
    return ResNet([3, 4, 6, 3], num_classes, stem=stem, width=width, **kwargs)
