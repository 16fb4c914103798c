"""Plain float networks for NWS (seed 004_ §4.3, §5.6; appendix §4 of 001_).

`nws.convert` turns every Conv2d and Linear of them into an NWS layer with its own pool. Every network
names its classifier `fc` and exposes `num_features` (the head's input width), so `replace_head` gives a
task its own head.
"""

from __future__ import annotations

from torch import nn

from .mlp import fc1024, lenet300
from .mobilenet import mobilenet_v2
from .resnet import replace_head, resnet18, resnet34
from .vgg import vgg16

ARCHITECTURES = {"resnet18": resnet18, "resnet34": resnet34, "vgg16": vgg16, "mobilenet_v2": mobilenet_v2,
                 "fc1024": fc1024, "lenet300": lenet300}


def build(name: str, **kwargs) -> nn.Module:
    """The network called `name` (a key of ARCHITECTURES), built with `kwargs` (num_classes, width, ...)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


__all__ = ["ARCHITECTURES", "build", "fc1024", "lenet300", "mobilenet_v2", "replace_head", "resnet18", "resnet34",
           "vgg16"]
