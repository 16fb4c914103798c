"""The Adam learning rate of SupSup and DST for the schedule a task actually gets (issue 14).

Adam normalises every step, so a parameter with a steady gradient moves about lr per step whatever the gradient's
size, and over a task at most lr · reach, where reach = Σ over the task's optimizer steps of the schedule's lr factor.
The official recipes let a parameter travel far: SupSup (Adam 1e-3, 250 epochs of 40 steps, cosine) lr · reach ≈ 5,
DST for CL (Adam 1e-3, 20 epochs of 79 steps, ×0.1 at 50% and 75% of them) ≈ 0.83, many times the scale of what they
train (SupSup's scores start in ±1/√fan_in, 0.03-0.09 in the demo's network; kaiming-scale weights alike). The
demo's 54 steps give 0.03-0.04 and 2 epochs of 9 steps 0.01: a score or a regrown weight moves a fraction of its own
scale. Measured on the demo data at 18 steps a task (BatchNorm statistics recomputed): SupSup 90.0% at the official
1e-3, 96.1% at this floor; DST 83.5% with prune/regrow rounds at a quarter of the task (88.3% every 10 steps), 96.6%
at the floor; Finetune 98.6%.

So an lr left unset is the official one, raised to TRAVEL / reach when the schedule would not let a parameter move
TRAVEL (about the largest init scale above, so every score or weight can cross its own scale at least once). The
official schedules keep the official lr exactly (their reach is 8-50 times more than that needs); an explicit lr
is taken as given. Nothing depends on the dataset beyond its number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from data_prep.manifest import read_unit

TRAVEL = 0.1


def adam_lr(base: float, reach: float, travel: float = TRAVEL) -> float:
    """`base`, or travel / reach when that is larger (a schedule too short for `base` to move a parameter `travel`)."""
    return max(base, travel / reach) if reach > 0 else base


def _schedule(ctx, t: int):
    """The loop's resolved schedule of task t when the loop provides one (`ctx.schedule`, a Context's), else None."""
    sched = ctx.schedule
    return sched if sched is not None and sched.task == t else None


def steps_per_epoch(ctx, t: int) -> int:
    """Optimizer steps of one epoch of task t (global batch, at most `max_steps_per_epoch`)."""
    sched = _schedule(ctx, t)
    if sched is not None:
        return int(sched.steps_per_epoch)
    inc = ctx.cfg.incremental
    n = int(read_unit(ctx.data_dir / ctx.tasks[t].name)["splits"]["train"]["num_samples"])
    per_epoch = max(1, n // inc.batch_size)
    return min(per_epoch, inc.max_steps_per_epoch) if inc.max_steps_per_epoch is not None else per_epoch


def epochs(ctx, t: int) -> int:
    """Epochs task t trains (the loop's schedule, else incremental.epochs)."""
    sched = _schedule(ctx, t)
    return int(sched.epochs) if sched is not None else ctx.cfg.incremental.epochs


def steps(ctx, t: int) -> int:
    """Optimizer steps task t takes."""
    sched = _schedule(ctx, t)
    return int(sched.steps) if sched is not None else steps_per_epoch(ctx, t) * epochs(ctx, t)


def reach(ctx, t: int, epoch_factor: Callable[[int, int], float] | None = None) -> float:
    """Σ of the lr factor over task t's steps: the loop's schedule (milestones × gamma), or `epoch_factor(epoch,
    epochs)` held for every step of an epoch (SupSup's per-epoch cosine)."""
    per_epoch, n = steps_per_epoch(ctx, t), epochs(ctx, t)
    if epoch_factor is not None:
        return per_epoch * sum(epoch_factor(e, n) for e in range(n))
    sched = _schedule(ctx, t)
    if sched is not None:
        return sum(sched.lr_factor(s) for s in range(int(sched.steps)))
    return per_epoch * sum(ctx.cfg.incremental.lr_factor(e) for e in range(n))


def cosine(epoch: int, epochs: int) -> float:
    """CosineAnnealingLR(T_max = epochs) stepped per epoch, as a factor on the initial lr."""
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
