"""Test accuracy of the networks pretraining hands on, measured on what is rebuilt from the written files (DESIGN §5:
every reported accuracy comes from a model rebuilt from the stored artifact)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import nws
from base.layout import BASE_MODEL, PLAIN, POOLS
from nws.artifact import load_task
from nws.io import load_tensors


@torch.no_grad()
def accuracy(model: nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy over this rank's share of `loader`, summed over all ranks (each sample counted once)."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for x, y in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        counts += torch.tensor([(pred == y).sum().item(), y.numel()], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1].clamp_min(1))


def rebuild_nws(out_dir: Path, model_cfg, num_classes: int) -> nn.Module:
    """The pretrained NWS network from pools.safetensors + base_model/ alone, as plain convs on the searched
    kernels (what task 0 of the incremental stage starts from and what inference runs)."""
    net = nws.convert(model_cfg.build(num_classes), pool_size=model_cfg.pool_size,
                      linear_group_size=model_cfg.linear_group_size)
    path = Path(out_dir) / POOLS
    nws.load_pools(net, load_tensors(path), str(path))
    load_task(Path(out_dir) / BASE_MODEL, net)
    return nws.materialize(nws.set_mode(net, "frozen"))


def rebuild_plain(out_dir: Path, model_cfg, num_classes: int) -> nn.Module:
    net = model_cfg.build(num_classes)
    net.load_state_dict(load_tensors(Path(out_dir) / PLAIN))
    return net
