"""Fully connected networks of SupSup's task-inference experiments (seed 002_: experiments/GNu, models/small.py).

- `fc1024`: the FC 1024-1024 of SupSup's GNu runs (Linear 784→1024, ReLU, 1024→1024, ReLU, head), no bias (the
  official FC layers are bias-free 1×1 convs over the flattened image), no BatchNorm: the setting where SupSup
  shows its one-shot task inference (a superposition of masks in a network without batch statistics).
- `lenet300`: LeNet-300-100 (300, 100 hidden units), the classic pruning benchmark network.

They read the grey image flattened: a source stored as RGB with replicated grey channels (data_prep.types) is
averaged back to one channel, so the first layer has input_size² inputs as in the seeds (784 on 28×28 MNIST). The
head is `fc` over `num_features` like every network of nws.models, so `replace_head` gives a task its own head.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet import check_common, scaled


class MLP(nn.Module):
    """Flatten the grey image, hidden Linear+ReLU layers `hidden`, then `fc`."""

    def __init__(self, hidden: tuple[int, ...], num_classes: int, width: float = 1.0, head: str = "linear",
                 head_bias: bool = False, input_size: int = 28):
        super().__init__()
        check_common(num_classes, width, head)
        if head != "linear":
            raise ValueError(f"the fully connected networks have a linear head, not {head!r}")
        self.head_kind, self.input_size = head, input_size
        layers: list[nn.Module] = []
        cin = input_size * input_size
        for units in hidden:
            cout = scaled(units, width)
            layers += [nn.Linear(cin, cout, bias=False), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes, bias=head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"this network reads {self.input_size}x{self.input_size} images (model.input_size), "
                             f"got {tuple(x.shape[-2:])}")
        grey = x.mean(1) if x.dim() == 4 else x
        return self.fc(self.features(grey.flatten(1)))


def fc1024(num_classes: int, width: float = 1.0, **kwargs) -> MLP:
    """SupSup's FC 1024-1024 (seed 002_, experiments/GNu/MNISTPerm/FC-250-tasks)."""
    return MLP((1024, 1024), num_classes, width=width, **kwargs)


def lenet300(num_classes: int, width: float = 1.0, **kwargs) -> MLP:
    """LeNet-300-100."""
    return MLP((300, 100), num_classes, width=width, **kwargs)
