"""The weights that weight-level methods (DST for CL, PackNet) mask or share between tasks, and the network they start
from: every convolution and linear weight except the task head `fc` is masked (the official codes mask every
conv/linear weight, biases and BatchNorm excluded); everything else of the state (BatchNorm, the head) is the task's
own, stored in its artifact."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from incremental.stored import StoredTaskError

HEAD = "fc"


def bare(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def masked_names(net: nn.Module) -> list[str]:
    """State keys of the masked weights, in module order."""
    return [f"{name}.weight" for name, m in bare(net).named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and name != HEAD and not name.startswith(HEAD + ".")]


def masked_params(net: nn.Module) -> dict[str, nn.Parameter]:
    """{key: parameter} of the masked weights of `net` (wrapped or not)."""
    params = dict(bare(net).named_parameters())
    return {name: params[name] for name in masked_names(net)}


def task_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Everything of the state dict but the masked weights: BatchNorm parameters and statistics, the head."""
    skip = set(masked_names(net))
    return {k: v.detach().clone() for k, v in bare(net).state_dict().items() if k not in skip}


def assemble(model_cfg, num_classes: int, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
             source: Path) -> nn.Module:
    """A plain network from masked weights + task state (strict: every key present, every shape right)."""
    net = model_cfg.build(num_classes)
    try:
        net.load_state_dict({**weights, **state})
    except RuntimeError as e:
        raise StoredTaskError(f"{source}: does not match the configured network: {e}") from None
    return net
