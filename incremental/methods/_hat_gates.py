"""HAT's units and gates (Serra et al., ICML 2018, §2.1-2.2; official networks alexnet_hat.py, mlp_hat.py): where a
network's units are, the gate a = σ(s·e) that multiplies each, and which gates a shared weight sits between (Eq. 2).

A unit is an output channel of a convolution or an output of a hidden linear layer. The official nets multiply the
gate into the layer's output after its nonlinearity (and pooling): `h = relu(conv(x)); h = h * gc`. Here:
- fully connected nets (nws.models.mlp): the gate multiplies the output of each hidden layer's ReLU (official
  mlp_hat.py exactly).
- ResNet (nws.models.resnet): the stem conv and each block's conv1 are followed by BN and a ReLU; their gate
  multiplies the BN's output, which equals gating after the ReLU since a ≥ 0 (relu(a·y) = a·relu(y); the block
  calls one ReLU module twice, so its output cannot be hooked alone). Each block's conv2 and its projection shortcut
  (when there is one) write into the same channels, summed and passed through one ReLU: they are one set of units
  with one gate, applied to the block's output after that ReLU (the official position). The identity skip carries
  the block's input, which the previous gate already multiplied, so a channel a task closes stays closed along the
  skip too. Gating conv2 and the shortcut separately before the sum would leave a channel open to a task whenever
  either path is open, and the gate would not say which units the task uses.
- the head `fc` is per task (official `last[t]`): it has no gate and no conditioning.

Gate names are the convolution/linear layer whose outputs they gate (`conv1`, `layer1.0.conv1`, `layer1.0.conv2`
for conv2 and the shortcut, `features.0`), so the stored embeddings read as the network's layers. `views` gives each
shared weight its (post, pre) gates: Eq. 2 scales the update of w_ij by 1 - min(a_i^post, a_j^pre); a first layer
has no pre gate (official get_view_for of c1/fc1: the input is not gated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nws.models.mlp import MLP
from nws.models.resnet import ResNet

HAT = "hat"  # attribute of the network holding its Gates


@dataclass(frozen=True)
class Plan:
    """gates: {gate: (module whose output it multiplies, units)}; views: {weight key: (post gate, pre gate | None)}."""

    gates: dict[str, tuple[str, int]]
    views: dict[str, tuple[str, str | None]]


def plan(net: nn.Module) -> Plan:
    """The units and weight views of a ResNet or fully connected network of nws.models (others are refused)."""
    gates: dict[str, tuple[str, int]] = {}
    views: dict[str, tuple[str, str | None]] = {}
    if isinstance(net, ResNet):
        gates["conv1"] = ("bn1", net.bn1.num_features)
        views["conv1.weight"] = ("conv1", None)
        into = "conv1"  # the gate of the current block input
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for j, block in enumerate(getattr(net, stage)):
                b = f"{stage}.{j}"
                gates[f"{b}.conv1"] = (f"{b}.bn1", block.bn1.num_features)
                gates[f"{b}.conv2"] = (b, block.bn2.num_features)
                views[f"{b}.conv1.weight"] = (f"{b}.conv1", into)
                views[f"{b}.conv2.weight"] = (f"{b}.conv2", f"{b}.conv1")
                if len(block.shortcut):
                    views[f"{b}.shortcut.0.weight"] = (f"{b}.conv2", into)
                into = f"{b}.conv2"
    elif isinstance(net, MLP):
        before = None
        for i, m in enumerate(net.features):
            if isinstance(m, nn.Linear):
                name = f"features.{i}"
                gates[name] = (f"features.{i + 1}", m.out_features)  # the ReLU after it
                views[f"{name}.weight"] = (name, before)
                before = name
    else:
        raise ValueError(f"HAT gates the units of ResNets and the fully connected networks, not {type(net).__name__}")
    return Plan(gates, views)


class Gates(nn.Module):
    """One task's embeddings e (a vector per gate, the official nn.Embedding row of the task) and the gates
    a = σ(s·e) (Eq. 1). In training mode s is `s` (annealed per batch by the method, Eq. 3), in evaluation mode
    `s_max`, as the official eval runs `forward(t, x, s=smax)`."""

    def __init__(self, embeddings: dict[str, torch.Tensor], s_max: float):
        super().__init__()
        self.names = list(embeddings)
        self.emb = nn.ParameterList([nn.Parameter(e.detach().clone()) for e in embeddings.values()])
        self.s_max, self.s = float(s_max), float(s_max)

    def embeddings(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.emb, strict=True))

    def current_s(self) -> float:
        return self.s if self.training else self.s_max

    def gate(self, name: str, s: float | None = None) -> torch.Tensor:
        return torch.sigmoid((self.current_s() if s is None else s) * self.emb[self.names.index(name)])

    def gates(self, s: float | None = None) -> dict[str, torch.Tensor]:
        return {name: self.gate(name, s) for name in self.names}


class Multiply:
    """The forward hook that multiplies a module's output by one gate (an object, not a closure, so that a deep
    copy of the network gates with its own copy of the embeddings)."""

    def __init__(self, gates: Gates, name: str):
        self.gates, self.name = gates, name

    def __call__(self, module, args, out):
        a = self.gates.gate(self.name)
        return out * a.view(1, -1, *([1] * (out.dim() - 2)))


def attach(net: nn.Module, embeddings: dict[str, torch.Tensor], s_max: float) -> nn.Module:
    """`net` with its units gated: Gates as `net.hat`, a forward hook on each gated module. The embeddings must be
    those of `plan(net)`'s gates, in shape."""
    spec = plan(net)
    want = {name: units for name, (_, units) in spec.gates.items()}
    got = {name: e.numel() for name, e in embeddings.items()}
    if got != want:
        raise ValueError(f"embeddings {got} do not fit the network's units {want}")
    gates = Gates({name: embeddings[name].reshape(-1) for name in spec.gates}, s_max)
    setattr(net, HAT, gates)
    modules = dict(net.named_modules())
    for name, (module, _) in spec.gates.items():
        modules[module].register_forward_hook(Multiply(gates, name))
    return net


def gates_of(net: nn.Module) -> Gates:
    return getattr(getattr(net, "module", net), HAT)


def condition(a_prev: dict[str, torch.Tensor], views: dict[str, tuple[str, str | None]],
              shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """{weight key: 1 - min(a_i^post, a_j^pre)} over the cumulative attention of earlier tasks (Eq. 2; official
    mask_back = 1 - get_view_for(mask_pre)), shaped like the weight."""
    out = {}
    for key, (post, pre) in views.items():
        shape = shapes[key]
        rest = [1] * (len(shape) - 2)
        view = a_prev[post].view(-1, 1, *rest)
        if pre is not None:
            view = torch.minimum(view, a_prev[pre].view(1, -1, *rest))
        out[key] = (1 - view).expand(shape).contiguous()
    return out
