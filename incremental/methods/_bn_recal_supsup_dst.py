"""BatchNorm running statistics recomputed for the network a task stores (issue 14; SupSup and DST).

Why: a stored task is evaluated in eval mode, i.e. with the running statistics its BatchNorm layers gathered while
training. Those are an exponential average (momentum 0.1) over the networks of the last ~20 steps, but SupSup's
and DST's networks keep changing under them: a SupSup mask flips entries at every step and starts from fresh
statistics (mean 0, var 1, official MultitaskNonAffineBN), DST starts from the dense backbone's statistics, masks 80%
of the weights away and prunes/regrows the rest. On a short schedule (18 steps a task) the running statistics
describe none of the trained networks: on the demo's digits SupSup's stored tasks scored 0.50-0.51 (chance) while
the training loss, computed with batch statistics, fell to 0.15-0.50, and the same masks in train mode scored
0.72-1.00; DST alike (0.49-0.76 stored, 0.75-1.00 in train mode). So, before a task is stored, its running
statistics are recomputed for the final network over the task's own training split (no augmentation): the
cumulative average (momentum None) over batches of the training batch size, what torch.optim.swa_utils.update_bn
does after weight averaging. The stored statistics then match the stored masks and weights whatever the schedule;
nothing else of the task changes.
"""

from __future__ import annotations

import torch
from torch import nn

from loaders import derive_seed, make_loader

MAX_BATCHES = 100  # 3,200 images at batch 32: a few hundred values per channel settle a mean and a variance


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibration_batches(ctx, t: int):
    """Task t's training split for recomputing statistics: the training batch size, no augmentation, shuffled with a
    fixed seed (a split cut short is a random sample, not one class's), the whole split on this process (rank 0
    stores the task), at most MAX_BATCHES batches, and at most `max_steps_per_epoch` when epochs are cut short."""
    cfg, inc = ctx.cfg, ctx.cfg.incremental
    limit = min(MAX_BATCHES, inc.max_steps_per_epoch or MAX_BATCHES)
    loader = make_loader(ctx.data_dir / ctx.tasks[t].name, "train", fmt=cfg.data.loader, batch_size=inc.batch_size,
                         train=False, augment=False, shuffle=True, seed=derive_seed(cfg.seeds[0], t, 11),
                         image_size=cfg.data.image_size, rank=0, world_size=1, num_workers=inc.num_workers)
    for i, batch in enumerate(loader):
        if i >= limit:
            break
        yield batch


def device_for(inc) -> torch.device:
    """The accelerator when training used one (the statistics pass is a forward over the training split)."""
    if torch.cuda.is_available() and not inc.cpu:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def recalibrate(model: nn.Module, batches, device: torch.device | str = "cpu") -> int:
    """Reset every BatchNorm's running statistics and recompute them as the cumulative average over `batches`
    (forward in train mode, no gradients); returns the number of samples seen. The model comes back on its own
    device, in its own train/eval modes, with its momenta; a model without BatchNorm is left alone."""
    bns = batchnorms(model)
    if not bns:
        return 0
    home = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.to(device).train()
    seen = 0
    try:
        for x, _ in batches:
            model(x.to(device))
            seen += len(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
        model.to(home)
    if seen == 0:
        raise ValueError("no batch to recompute the BatchNorm statistics from (empty training split)")
    return seen


def recalibrate_task(model: nn.Module, ctx, t: int) -> int:
    """`recalibrate` over task t's training split (see `recalibration_batches`) on the device training used."""
    return recalibrate(model, recalibration_batches(ctx, t), device_for(ctx.cfg.incremental))
