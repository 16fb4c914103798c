"""BatchNorm running statistics that match the weights they are stored with (issue 14).

A task model is stored with its BatchNorm running statistics, and the evaluation normalises with them. In training
mode they are an exponential moving average (momentum 0.1, so mostly the last ~20 batches) taken while the weights
were still moving. When the weights change abruptly near the end of a short schedule (PackNet frees 75% of a task's
weights and retrains for a few steps; Piggyback's and KSM's masks cross their threshold together), the stored
statistics describe another network: the demo's PackNet task 0 scored 50% (chance) with them and 100% with statistics
re-estimated for the same stored weights.

`recalibrate_batchnorm` re-estimates them with the weights fixed: every BatchNorm layer in training mode with
momentum None (PyTorch's cumulative average, so each batch counts equally), no gradient, at most `max_batches`
batches; the approach of torch.optim.swa_utils.update_bn. `task_batches` draws those batches from the task's training
split with the evaluation transform (no augmentation): the statistics are for the inputs the stored model will see.

`freeze_batchnorm` is the other consistent choice, the official PackNet's default (`train_nobn`, notes/algorithms.md
§4): BatchNorm stays in evaluation mode with its pretrained statistics and affine parameters throughout training, so
training and evaluation compute the same function and nothing can go stale.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from loaders import derive_seed, make_loader, resolve_rank

DEFAULT_BATCHES = 100  # at batch 32, 3,200 images: a few hundred per channel are enough for a mean and a variance
_SEED_TAG = 11  # derive_seed(seed, task, tag): the recalibration's own shuffle, apart from the training epochs'
FROZEN = "frozen_statistics"  # attribute `freeze_batchnorm` sets: recalibration leaves such a layer alone


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` (unwrapped from DDP) that keep running statistics."""
    net = getattr(model, "module", model)
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, max_batches: int | None = DEFAULT_BATCHES) -> int:
    """Replace the running statistics of every BatchNorm layer of `model` by their average over `batches` (x, ...)
    (at most `max_batches`), the weights held fixed; returns the number of batches used (0: nothing changed).

    Runs the unwrapped module (a DistributedDataParallel forward would broadcast rank 0's buffers); each process
    averages over its own batches, so a multi-process caller averages the statistics over processes afterwards
    (base.training.sync_batchnorm_statistics does at the end of every task). Training flags and momenta are restored."""
    net = getattr(model, "module", model)
    layers = [m for m in batchnorms(net) if not getattr(m, FROZEN, False)]
    if not layers or max_batches == 0:
        return 0
    device = next(net.parameters()).device
    modes = {m: m.training for m in net.modules()}
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            net(x.to(device))
            used += 1
    finally:
        for m, momentum, mean, var, count in saved:
            m.momentum = momentum
            if used == 0:  # no data: keep what was there rather than the reset values
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
    return used


def task_batches(ctx, t: int):
    """This process's share of task t's training split, shuffled with a fixed seed (a bounded number of batches is
    then a random sample, the same on a resumed run), the evaluation transform, the training batch size."""
    cfg, inc = ctx.cfg, ctx.cfg.incremental
    rank, world = resolve_rank()
    return make_loader(ctx.data_dir / ctx.tasks[t].name, "train", fmt=cfg.data.loader,
                       batch_size=max(1, inc.batch_size // world), train=False, augment=False, shuffle=True,
                       image_size=cfg.data.image_size, seed=derive_seed(cfg.seeds[0], t, _SEED_TAG), rank=rank,
                       world_size=world, num_workers=inc.num_workers)


def recalibrate_task(model: nn.Module, ctx, t: int, max_batches: int | None = DEFAULT_BATCHES) -> int:
    """`recalibrate_batchnorm` over task t's training data (`task_batches`), at most `max_batches` batches and, in a
    run whose epochs are cut short (incremental.max_steps_per_epoch, smoke runs), at most one such epoch."""
    cut = ctx.cfg.incremental.max_steps_per_epoch
    if cut is not None:
        max_batches = cut if max_batches is None else min(max_batches, cut)
    if max_batches == 0 or not batchnorms(model):
        return 0
    return recalibrate_batchnorm(model, task_batches(ctx, t), max_batches)


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Keep every BatchNorm layer of `model` as it is while the rest trains: evaluation mode in every forward (even
    after `model.train()`), so its running statistics neither normalise with the batch nor change, and its affine
    parameters out of the optimizer (requires_grad False). The official PackNet's `train_nobn` with BN grads zeroed."""
    for m in batchnorms(model):
        m.requires_grad_(False)
        m.register_forward_pre_hook(_stay_in_eval)
        setattr(m, FROZEN, True)
    return model
