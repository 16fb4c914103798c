"""The training schedule of one task, resolved in optimizer steps (issue 14).

Seed 004_ §5.4 trains every task 100 epochs and divides the lr by 10 after epochs 50 and 80: a fixed number of
epochs, whose length in optimizer steps follows the task's size. On a Split-CIFAR-100 task (2,500 images, batch 32)
that is 7,800 steps; on a task of 40 images it is 100 steps, and a short epoch budget (the demo's 6 epochs) leaves
such a task 6 steps, too few for any method to leave chance. So the budget may be given in steps and may have a
floor, and the milestones may be fractions of the schedule, which keeps the paper's shape (lr ÷10 at 50% and 80%)
whatever length the task gets:

- `incremental.epochs` (default) or `incremental.steps`: the planned budget; epochs = ceil(steps / steps_per_epoch).
- `incremental.min_steps`: the least number of steps any task takes; a task whose budget is shorter gets more
  epochs (ceil(min_steps / steps_per_epoch)). 0 (the default) keeps the budget as given. Both count whole epochs of
  the task's data: `max_steps_per_epoch` (smoke runs) still cuts each epoch short.
- `incremental.milestones`: integers are epochs of `incremental.epochs`, exactly as before; when a task's schedule
  is stretched to min_steps they keep their place as fractions (m / epochs) of the stretched schedule. Numbers in
  (0, 1) are fractions of the task's steps.

Epochs stay whole (a task sees its data a whole number of times; checkpoints are per epoch), so a task takes
epochs × steps_per_epoch steps, at least the budget. The lr changes at the milestones' steps; a milestone of epoch m
is step m × steps_per_epoch, the first step of epoch m, so an epoch-milestone schedule is the per-epoch schedule it
always was. Methods read the resolved schedule of the task they train as `ctx.schedule` (incremental.methods).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from base import training
from data_prep.manifest import read_unit
from loaders import resolve_rank


@dataclass(frozen=True)
class TaskSchedule:
    """Task `task`'s schedule: `steps` optimizer steps in `epochs` epochs of `steps_per_epoch`, the lr multiplied
    by `gamma` at each step of `milestones`. `budget` says what set the length: "epochs", "steps" or "min_steps"."""

    task: int
    train_samples: int  # images in the task's training split
    batch_size: int  # global batch
    steps_per_epoch: int
    epochs: int
    steps: int  # epochs * steps_per_epoch
    milestones: tuple[int, ...]  # optimizer steps (0-based) from which the lr is multiplied by gamma once more
    gamma: float
    budget: str
    extra_epochs: int = 0  # epochs the method trains after the budget (PackNet's retraining), included in epochs


    def lr_factor(self, step: int) -> float:
        """gamma ** (milestones reached) at optimizer step `step` (0-based): the multiplier on every initial lr."""
        return training.lr_factor(step, self.milestones, self.gamma)

    def reach(self) -> float:
        """Σ over the task's steps of lr_factor: how far, in units of the initial lr, the schedule lets a parameter
        with a steady normalised update (Adam) move."""
        bounds = [0, *(min(m, self.steps) for m in self.milestones), self.steps]
        return sum(self.gamma ** k * (b - a) for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)))

    def as_dict(self) -> dict:
        data = {**asdict(self), "milestones": list(self.milestones)}
        if not self.extra_epochs:  # schedules without them read as they always did (metrics.json)
            del data["extra_epochs"]
        return data

    def describe(self) -> str:
        """`288 images, 9 steps/epoch, 6 epochs = 54 steps, lr x0.1 at steps 27, 43`: the task's log line."""
        text = (f"{self.train_samples} images, {self.steps_per_epoch} steps/epoch, {self.epochs} epochs = "
                f"{self.steps} steps")
        if self.budget == "min_steps":
            text += " (raised to incremental.min_steps)"
        if self.extra_epochs:
            text += f" (the last {self.extra_epochs} after the budget: the method's retraining)"
        reached = [m for m in self.milestones if m < self.steps]
        if reached:
            text += f", lr x{self.gamma:g} at step{'s' if len(reached) > 1 else ''} " + ", ".join(map(str, reached))
        return text


def steps_per_epoch(samples: int, batch_size: int, world_size: int = 1, max_steps: int | None = None) -> int:
    """Optimizer steps of one epoch as incremental.train takes them: each process reads an equal share of the
    images (loaders) in batches of batch_size // world_size, the last partial batch dropped unless it is
    the only one, at most `max_steps` (incremental.max_steps_per_epoch)."""
    share = samples // world_size if world_size > 1 else samples
    batch = max(1, batch_size // world_size)
    steps = share // batch or math.ceil(share / batch)
    return min(steps, max_steps) if max_steps is not None else steps


def resolve(inc, task: int, samples: int, world_size: int = 1) -> TaskSchedule:
    """The schedule of a task of `samples` training images under the incremental config `inc` (module docstring).
    The budget and min_steps count whole epochs of the task's data; `max_steps_per_epoch` (smoke runs) then cuts
    each of those epochs short, as it always did, and fractional milestones follow the steps actually taken."""
    full = steps_per_epoch(samples, inc.batch_size, world_size)
    per_epoch = steps_per_epoch(samples, inc.batch_size, world_size, inc.max_steps_per_epoch)
    if inc.steps is not None:
        epochs, budget = (math.ceil(inc.steps / full) if full else 0), "steps"
    else:
        epochs, budget = inc.epochs, "epochs"
    if full and epochs * full < inc.min_steps:
        epochs, budget = math.ceil(inc.min_steps / full), "min_steps"
    steps = epochs * per_epoch
    milestones = []
    for m in inc.milestones:
        if isinstance(m, float):  # a fraction of the task's steps
            milestones.append(_nearest(m * steps))
        elif budget == "epochs":  # an epoch of the schedule as configured: its first step
            milestones.append(m * per_epoch)
        else:  # an epoch of `incremental.epochs`, kept at its place in the stretched schedule
            milestones.append(_nearest(m * steps / inc.epochs))
    return TaskSchedule(task=task, train_samples=samples, batch_size=inc.batch_size, steps_per_epoch=per_epoch,
                        epochs=epochs, steps=steps, milestones=tuple(milestones), gamma=inc.gamma, budget=budget)


def lengthened(sched: TaskSchedule, extra_epochs: int) -> TaskSchedule:
    """`sched` followed by `extra_epochs` more epochs at the lr its last milestone left (PackNet's retraining after
    pruning: seed 001_ App. 5 trains 100 epochs, prunes, then retrains 30; the official retraining runs at the
    training lr ÷ 10, which the paper's lr 0.01 ÷ 100 after its milestones at 50 and 80 matches)."""
    if not extra_epochs:
        return sched
    epochs = sched.epochs + extra_epochs
    return replace(sched, epochs=epochs, steps=epochs * sched.steps_per_epoch,
                   extra_epochs=sched.extra_epochs + extra_epochs)


def _nearest(x: float) -> int:
    return math.floor(x + 0.5)


def train_samples(ctx, t: int) -> int:
    """Images in task t's training split (its manifest entry)."""
    return int(read_unit(ctx.data_dir / ctx.tasks[t].name)["splits"]["train"]["num_samples"])


def for_task(ctx, t: int, world_size: int | None = None) -> TaskSchedule:
    """Task t's schedule under ctx's config, lengthened by the epochs the method adds after the budget
    (`ctx.extra_epochs`); `world_size` defaults to the running process group's (the one the training loader is
    sharded over)."""
    if world_size is None:
        world_size = resolve_rank()[1]
    return lengthened(resolve(ctx.cfg.incremental, t, train_samples(ctx, t), world_size), ctx.extra_epochs)
