"""NWS task networks of the incremental stage: built over the stored pools, with a head per task.

Seed 004_ §4.3 / notes/algorithms.md §1.2: the classifier of the NWS ResNet is itself an NWS layer over a scalar
pool (the official `Nws1x1` head), so a task's head is stored as indices too; `head="float"` keeps a float head
instead (stored in the task's state). The official `reset_last_layer` keeps the first C rows of the old head when it
has at least C rows, and otherwise copies the old rows into a freshly initialised head; `swap_head` does the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import nws


def build(model_cfg, num_classes: int, pools: dict[str, torch.Tensor], float_head: bool,
          source: str = "pools") -> nn.Module:
    """The configured network as an NWS network (every conv, and the head unless `float_head`) with the stored
    pools loaded (errors start with `source`, the pools file); temporary kernels and indices still to be set from a
    task artifact."""
    net = model_cfg.build(num_classes)
    net = nws.convert(net, pool_size=model_cfg.pool_size, linear_group_size=model_cfg.linear_group_size,
                      skip=("fc",) if float_head else ())
    names = [name for name, _ in nws.nws_layers(net)]
    return nws.load_pools(net, {name: pools[name] for name in names if name in pools}, source)


def head_weight(head: nn.Module) -> torch.Tensor:
    """The weights the head computes with: the searched kernels of an NWS head, else its float weight."""
    return head.searched_weight() if isinstance(head, nws.NWSLayer) else head.weight


@torch.no_grad()
def swap_head(net: nn.Module, num_classes: int, kind: str, head_pool: torch.Tensor | None) -> nn.Module:
    """Give `net` a head of `num_classes` outputs of `kind` ("nws" over `head_pool`, or "float"), starting from
    the old head's rows (official reset_last_layer); an old head of the same kind and size is kept as it is."""
    old = net.fc
    if (kind == "nws") == isinstance(old, nws.NWSLayer) and old.weight.shape[0] == num_classes:
        return net
    old_w = head_weight(old).detach().clone()
    bias = getattr(old, "bias", None) is not None
    holder = nn.Module()
    holder.fc = nws.models.resnet.make_head(net.head_kind, net.num_features, num_classes, bias)
    if kind == "nws":
        if head_pool is None:
            raise ValueError("an NWS head needs the head pool (layer 'fc' of pools.safetensors)")
        n, g = head_pool.shape
        holder = nws.convert(holder, pool_size=n, linear_group_size=g)
        holder.fc.pool.copy_(head_pool)
    new = holder.fc
    rows = min(num_classes, old_w.shape[0])
    new.weight[:rows].copy_(old_w[:rows].reshape_as(new.weight[:rows]))
    net.fc = new
    return net


def base_num_classes(manifest: dict, folder: Path) -> int:
    meta = manifest.get("meta", {})
    if "num_classes" not in meta:
        raise ValueError(f"{folder}: artifact.json has no meta.num_classes; was it written by `nws pretrain`?")
    return int(meta["num_classes"])
