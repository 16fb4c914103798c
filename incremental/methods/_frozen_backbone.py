"""The frozen plain backbone that the mask methods (Piggyback, KSM; notes/algorithms.md §4) learn over.

Both keep the pretrained weights W of the convolutions and linear layers fixed and learn, per task, a mask that
scales them: W_eff = f(m) ⊙ W.
What is shared and what is per task:
- shared, stored once for all tasks: `<method>/backbone.safetensors`, the weights (and biases, if any) of every
  convolution and linear layer except the head, copied from the pretrain stage's plain backbone;
- per task: the mask (the method's file), and `state.safetensors` with everything else of the network (BatchNorm
  parameters and running statistics, trained per task from the pretrained ones, and the task's own head).

During training the mask is a `torch.nn.utils.parametrize` parametrization of each masked layer's `weight`, so the
frozen tensor is never in an optimizer; the rebuilt model is a plain network whose masked weights are W_eff. The
official Piggyback masks Linear layers as it masks convolutions (ElementWiseLinear beside ElementWiseConv2d), so the
fully connected networks (fc1024, lenet300) are masked too: a Linear weight is a (out, in) conv weight of 1×1
kernels (issue 16: with convolutions only, they had nothing to mask and trained a head over a frozen network).

BatchNorm statistics: after the last epoch the running statistics are re-estimated over the task's training data with
the final masks (methods._bn_stats), so the stored statistics belong to the stored masks. The moving averages of
training lag behind the masks, which on a short schedule change most near the end (entries cross their threshold
together; methods._mask_schedule scales the lrs so that they can cross early).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from incremental.methods import Method
from incremental.methods import _mask_schedule as mask_schedule
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._bn_stats import freeze_batchnorm, recalibrate_task
from incremental.stored import StoredTaskError, is_sealed
from nws.io import load_tensors, save_tensors

BACKBONE = "backbone.safetensors"
STATE = "state.safetensors"
HEAD = "fc"


def masked_layers(net: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Every convolution and linear layer of `net` but the head, in module order: the layers a mask method
    masks."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and name != HEAD]


def frozen_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """{key: tensor} of the masked layers' weights and biases in a plain network."""
    return {f"{name}.{key}": p.detach().clone() for name, conv in masked_layers(net)
            for key, p in conv.named_parameters(recurse=False)}


def backbone_path(ctx) -> Path:
    return ctx.method_dir / BACKBONE


def prepare_backbone(ctx, stored: Callable[[int], bool]) -> None:
    """Put the frozen weights of the masked layers into the method folder (idempotent); refuse a changed backbone once a
    task (`stored(t)`) was trained over the old one."""
    src, dst = check_plain(ctx), backbone_path(ctx)
    frozen = frozen_tensors(load_plain(ctx))
    if dst.is_file():
        old = load_tensors(dst)
        if old.keys() == frozen.keys() and all(torch.equal(old[k], frozen[k]) for k in frozen):
            return
        done = [t for t in range(len(ctx.tasks)) if stored(t)]
        if done:
            raise ValueError(f"{src} differs from {dst}, the backbone tasks {done} were trained over; use another "
                             "output folder for a new backbone")
    save_tensors(dst, frozen, metadata={"content": "frozen convolution weights", "source": str(src)})


def start_net(ctx, t: int) -> nn.Module:
    """Task t's network before its mask: the pretrained plain network (BatchNorm included) with a fresh head for
    task t's classes, its masked layers frozen."""
    net = load_plain(ctx, ctx.tasks[t].num_classes)
    for _, layer in masked_layers(net):
        layer.requires_grad_(False)
    return net


def attach(net: nn.Module, make: Callable[[nn.Conv2d], nn.Module]) -> nn.Module:
    """Parametrize every masked layer's weight as `make(conv)(W)` (the mask module holds the trainable mask)."""
    for _, layer in masked_layers(net):
        parametrize.register_parametrization(layer, "weight", make(layer))
    return net


def mask_modules(net: nn.Module) -> dict[str, nn.Module]:
    """{layer name: its mask module} of a network `attach` parametrized."""
    return {name: conv.parametrizations.weight[0] for name, conv in masked_layers(net)
            if parametrize.is_parametrized(conv, "weight")}


def original_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: the frozen W under its mask} of a parametrized network."""
    return {name: conv.parametrizations.weight.original for name, conv in masked_layers(net)
            if parametrize.is_parametrized(conv, "weight")}


def param_groups(net: nn.Module, lr_mask: float | None, lr_bn: float | None, lr_head: float | None) -> list[dict]:
    """Groups of the official mask code: the masks, the BatchNorm parameters, the head, each its own lr (None: a
    group without "lr", which takes the optimizer's, incremental.lr under recipe "paper")."""
    masks = [p for m in mask_modules(net).values() for p in m.parameters()]
    head = list(getattr(net, HEAD).parameters())
    taken = {id(p) for p in masks + head}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in taken]
    return [{"params": ps, **({"lr": lr} if lr is not None else {})}
            for ps, lr in ((masks, lr_mask), (rest, lr_bn), (head, lr_head)) if ps]


def task_state(net: nn.Module, shared: set[str]) -> dict[str, torch.Tensor]:
    """What task t stores besides its mask: every entry of the state dict that is neither a shared frozen tensor
    nor a parametrization's internals (BatchNorm and head)."""
    return {k: v for k, v in net.state_dict().items() if k not in shared and ".parametrizations." not in k}


def save_state(ctx, net: nn.Module, folder: Path, meta: dict[str, str]) -> None:
    """Write task t's `state.safetensors` (BatchNorm + head) into its folder."""
    shared = set(load_tensors(backbone_path(ctx)))
    save_tensors(folder / STATE, task_state(net, shared), metadata=meta)


def rebuild_net(ctx, t: int, folder: Path, scales: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """Task t's plain network from the shared backbone, its `state.safetensors`, and each masked layer's mask as a
    float multiplier `scales[name]` (W's shape, or its first two dimensions for one value per kernel, broadcast over
    the kernel; read from `source`): the masked weights become mask ⊙ W."""
    backbone, state = backbone_path(ctx), folder / STATE
    net = ctx.cfg.model.build(ctx.tasks[t].num_classes)
    try:
        net.load_state_dict({**load_tensors(backbone), **load_tensors(state)})
    except RuntimeError as e:
        raise StoredTaskError(f"{state} with {backbone}: does not match the configured network: {e}") from None
    layers = masked_layers(net)
    names = [name for name, _ in layers]
    if sorted(scales) != sorted(names):
        raise StoredTaskError(f"{source}: masks for layers {sorted(scales)}, expected {sorted(names)}")
    with torch.no_grad():
        for name, layer in layers:
            w, scale = layer.weight, scales[name]
            if scale.dim() == 2 < w.dim():  # one value per kernel
                scale = scale.reshape(*scale.shape, *(1,) * (w.dim() - 2))
            if scale.dim() != w.dim() or scale.shape[:2] != w.shape[:2] or scale.shape[2:] not in (w.shape[2:],
                                                                                               (1,) * (w.dim() - 2)):
                raise StoredTaskError(f"{source}: mask {name!r} of shape {tuple(scale.shape)} does not fit the weight "
                                      f"of shape {tuple(w.shape)}")
            w.copy_(w * scale)  # the product the parametrized training network computes
    return net


class MaskMethod(Method):
    """What Piggyback and KSM share: the frozen backbone stored once for all tasks, the official mask code's Adam
    over the masks, BatchNorm and head, each with its lr (options lr_mask, lr_bn, lr_head; recipe "paper": the shared
    SGD, incremental.methods), and BatchNorm trained per task with its statistics re-estimated for the final masks
    (option bn_batches), or option `bn: frozen`: the pretrained BN in evaluation mode and out of the optimizer (the
    official scripts without --train_bn). A subclass says what mask a layer gets (`make_mask`)."""

    task = -1  # the task set up last

    @abstractmethod
    def make_mask(self, layer: nn.Conv2d | nn.Linear) -> nn.Module:
        """The parametrization (holding the trainable mask) of one masked layer's weight."""

    def setup_task(self, t: int) -> nn.Module:
        self.task = t
        net = attach(start_net(self.ctx, t), self.make_mask)
        return freeze_batchnorm(net) if self.opts.bn == "frozen" else net

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch + 1 == self.schedule(self.task).epochs and self.opts.bn == "train":
            recalibrate_task(model, self.ctx, self.task, self.opts.bn_batches)

    def prepare(self) -> None:
        prepare_backbone(self.ctx, lambda t: is_sealed(self.ctx.task_dir(t)))

    def shared_files(self) -> dict[str, list[Path]]:
        return {"backbone": [backbone_path(self.ctx)]}

    def schedule(self, t: int):
        """Task t's resolved schedule (incremental.schedule): the loop's while t trains, else from the config."""
        sched = self.ctx.schedule
        return sched if sched is not None and sched.task == t else self.ctx.schedule_for(t)

    def lr_scale(self, t: int) -> float:
        """The factor on the default lrs of task t that lets its masks cross their threshold within its schedule
        (methods._mask_schedule; option min_travel, 0 = the lrs as given)."""
        opts = self.opts
        return mask_schedule.lr_scale(opts.lr_mask, opts.mask_init - opts.threshold, self.schedule(t).reach(),
                                      opts.min_travel)

    def lrs(self, t: int) -> tuple[float, float, float]:
        """(mask, BN, head) lrs of task t: the options, those left at their defaults times `lr_scale(t)`; the BN lr
        follows the mask lr unless given."""
        opts, scale = self.opts, self.lr_scale(t)
        given = opts.model_fields_set
        mask = opts.lr_mask if "lr_mask" in given else scale * opts.lr_mask
        head = opts.lr_head if "lr_head" in given else scale * opts.lr_head
        return mask, opts.lr_bn if opts.lr_bn is not None else mask, head

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The official Adam's three groups with their lrs; recipe "paper": the masks at `lr_mask` as given (App. 5
        of seed 001_ keeps KSM's mask lr 2e-4, its one method-specific hyperparameter), BN and head at the paper's
        incremental.lr (a group without "lr")."""
        if self.recipe == "paper":
            return param_groups(model, self.opts.lr_mask, None, None)
        return param_groups(model, *self.lrs(self.task))

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=0.0)
