"""Training of one task (Algorithm 1 lines 2-12 of seed 004_, for any method): SGD with momentum and weight decay,
the learning rate divided at the milestones (§5.4), cross-entropy plus the method's extra loss, the method's step
hooks, an accelerate checkpoint after every epoch, and resumption from the latest one.

The task's schedule (epochs, steps per epoch, milestones in steps) is resolved once per task from its training-set
size (incremental.schedule) and handed to the method as `ctx.schedule`. The learning rate is set before every step
from the step's place in that schedule (no scheduler object), so a resumed task and a multi-process run follow the
same schedule; milestones given in epochs fall on the first step of their epoch, as the per-epoch schedule did. A
non-finite loss skips the step with a logged reason; too many in a row stop the task (DESIGN §5). The guard, the
schedule function and the BatchNorm sync are pretraining's too (base.training). A process that caught SIGUSR1
(nws.preempt: Slurm's warning before the time limit) stops after the next epoch's checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from base.training import NonFiniteGuard, NonFiniteLoss, nonfinite_where, scale_lr, sync_batchnorm_statistics
from incremental import checkpoint, schedule
from incremental.checkpoint import Progress
from loaders import derive_seed, make_loader
from nws.preempt import Preempted, requested, stopping


def trainable(groups: Iterable[dict]) -> int:
    """Number of trainable scalars in parameter groups (logged per task)."""
    return sum(p.numel() for g in groups for p in g["params"])


def train_loader(ctx, t: int, accelerator):
    """This process's share of task t's training split (global batch split over processes); `set_epoch` picks the
    epoch's shuffle and augmentation."""
    cfg, inc = ctx.cfg, ctx.cfg.incremental
    unit = ctx.data_dir / ctx.tasks[t].name
    batch = max(1, inc.batch_size // accelerator.num_processes)
    loader = make_loader(unit, "train", fmt=cfg.data.loader, batch_size=batch, train=True, augment=inc.augment,
                         image_size=cfg.data.image_size, seed=derive_seed(cfg.seeds[0], t),
                         rank=accelerator.process_index, world_size=accelerator.num_processes,
                         num_workers=inc.num_workers, drop_last=True)
    if len(loader) == 0:  # fewer samples than one batch: keep the partial batch rather than train on nothing
        loader.drop_last = False
    return loader


def signalled(accelerator) -> bool:
    """Whether any process caught SIGUSR1 (all stop after the same epoch)."""
    flag = torch.tensor(float(requested()), device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() > 0


def train_task(accelerator, method, t: int, tracker, log: Callable[[str], None],
               on_epoch_end: Callable[[int, int], None] | None = None) -> tuple[nn.Module, Progress]:
    """Train task t (resuming from its latest checkpoint); returns the unwrapped trained model and its progress."""
    ctx, inc = method.ctx, method.inc
    sched = ctx.schedule = schedule.for_task(ctx, t, accelerator.num_processes)
    torch.manual_seed(derive_seed(ctx.cfg.seeds[0], t, 7))  # setup_task sees the same RNG on a resumed run
    raw = method.setup_task(t)
    groups = method.param_groups(raw)
    optimizer = method.make_optimizer(groups)
    for g in optimizer.param_groups:  # every group keeps its own initial lr; the schedule scales it
        g["initial_lr"] = g["lr"]
    model, optimizer = accelerator.prepare(raw, optimizer)
    root = checkpoint.task_checkpoints(ctx.method_dir, t)
    progress, state = checkpoint.restore(accelerator, root)
    if state:
        method.load_checkpoint_state(state)
    log(f"task {t} ({ctx.tasks[t].name}, {ctx.tasks[t].num_classes} classes): {trainable(groups)} trainable "
        f"parameters; {sched.describe()}" + (f"; resuming after epoch {progress.epoch} from {root}"
                                             if progress.epoch else ""))
    device, loader = accelerator.device, train_loader(ctx, t, accelerator)
    per_epoch = sched.steps_per_epoch
    if min(len(loader), inc.max_steps_per_epoch or len(loader)) != per_epoch:
        raise RuntimeError(f"task {t}: the loader gives {len(loader)} batches an epoch, the schedule expects "
                           f"{per_epoch} (incremental.schedule.steps_per_epoch and loaders disagree)")
    every = max(1, sched.epochs // 100)  # epoch lines: every epoch up to 100 epochs, then about 100 in all
    first, seconds_before = progress.epoch, progress.seconds  # this run's pace: resumed epochs are not counted
    guard = NonFiniteGuard(inc.max_consecutive_skips, skipped=progress.skipped)
    for epoch in range(progress.epoch, sched.epochs):
        start, losses = time.perf_counter(), []
        guard.ok()  # a run of skips ends with its epoch
        hits = torch.zeros(2, device=device)  # correct predictions, images: the epoch's training accuracy
        model.train()
        loader.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if i >= per_epoch:
                break
            scale_lr(optimizer, sched.lr_factor(epoch * per_epoch + i))
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            extra = method.extra_loss(model)
            total = loss if extra is None else loss + extra
            if guard.bad_terms({"loss": total}):  # on any process
                stop = guard.skip()
                progress.skipped = guard.skipped
                optimizer.zero_grad(set_to_none=True)
                where = nonfinite_where(model, x)
                log(f"task {t} epoch {epoch} step {i}: non-finite loss (ce {loss.item()}; {where}), step skipped")
                if stop:
                    raise NonFiniteLoss(f"task {t}: {guard.consecutive} non-finite losses in a row at epoch {epoch}: "
                                        f"{where}; lower incremental.lr or check the data (the last epoch checkpoint "
                                        "is intact)")
                continue
            guard.ok()
            accelerator.backward(total)
            method.before_step(model)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            method.after_step(model, progress.step)
            losses.append(total.item())
            hits += torch.stack([(logits.detach().argmax(1) == y).sum(), torch.tensor(len(y), device=device)])
            if progress.step % inc.log_every == 0:
                tracker.log_metrics({f"task{t:02d}/train_loss_step": losses[-1]}, step=progress.step)
        method.after_epoch(model, epoch)
        progress.epoch, progress.seconds = epoch + 1, progress.seconds + time.perf_counter() - start
        progress.last_loss = sum(losses) / len(losses) if losses else None
        checkpoint.save(accelerator, root, progress, method.checkpoint_state())
        tracker.log_metrics({f"task{t:02d}/train_loss": progress.last_loss or float("nan"),
                             f"task{t:02d}/lr": optimizer.param_groups[0]["lr"]}, step=epoch)
        correct, seen = accelerator.reduce(hits, "sum").tolist()  # every process's batches
        if (epoch + 1) % every == 0 or epoch + 1 == sched.epochs:
            left = (progress.seconds - seconds_before) / (epoch + 1 - first) * (sched.epochs - epoch - 1)
            loss_text = "n/a" if progress.last_loss is None else f"{progress.last_loss:.4f}"
            acc_text = f", train acc {100 * correct / seen:.1f}%" if seen else ""
            log(f"task {t} ({t + 1}/{len(ctx.tasks)}) epoch {epoch + 1}/{sched.epochs}: loss {loss_text}{acc_text}, "
                f"{len(losses)} steps, {progress.seconds:.1f} s, about {left:.0f} s left in the task")
        if on_epoch_end is not None:
            on_epoch_end(t, epoch)
        if signalled(accelerator):
            stopping()
            raise Preempted(f"task {t}: SIGUSR1: checkpoint of epoch {epoch + 1}/{sched.epochs} written to {root}; "
                            "the same command resumes from it")
    sync_batchnorm_statistics(raw, accelerator.num_processes)
    del model, optimizer  # the DDP wrapper and its reducer go now, not at interpreter exit after the group is gone
    accelerator.free_memory()
    return unwrap(raw).cpu(), progress


def unwrap(raw: nn.Module) -> nn.Module:
    """The module given to `prepare`, without the autocast forward accelerate patched onto it (the wrappers hold it,
    not the other way round; unwrap_model would import every distributed backend to find that out)."""
    raw.__dict__.pop("forward", None)
    raw.__dict__.pop("_original_forward", None)
    return raw
