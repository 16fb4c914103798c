"""The two accuracies of forward transfer (GEM, Lopez-Paz & Ranzato 2017; notes/frameworks.md §4), measured
before task t trains: the one exception to "every accuracy comes from the stored files" (DESIGN §5), since neither
model is a stored task model, and neither enters the accuracy matrix.

- before (GEM's R[t-1, t]): the network the method sets up for task t (`setup_task(t)`: what earlier tasks left,
  with task t's fresh head), before any step, on task t's test split;
- random (GEM's b̄_t): a randomly initialised network of the configured architecture with a head for task t,
  seeded from the run's seed and t (the same for every method), on the same split.

In multi-head task-incremental learning task t's head is untrained in both, so both sit near chance and FWT
(incremental.metrics.fwt) is near 0 for every method: a backbone cannot transfer through a head that has not
learned yet. That is why mask-based TIL papers rarely report it; it is measured here because the continual-learning
frameworks (Mammoth, Avalanche) do.
"""

from __future__ import annotations

import torch

from data_prep.loaders import derive_seed
from incremental import schedule
from incremental.evaluate import accuracy


def before_learning(method, t: int, loader, accelerator) -> float:
    """Accuracy on task t of the model task t's training would start from (the loop's seed and schedule)."""
    ctx = method.ctx
    ctx.schedule = schedule.for_task(ctx, t, accelerator.num_processes)
    torch.manual_seed(derive_seed(ctx.cfg.seeds[0], t, 7))  # incremental.train's: the head training starts with
    return accuracy(method.setup_task(t), loader, accelerator)


def random_init(cfg, t: int, num_classes: int, loader, accelerator) -> float:
    """Accuracy on task t of a randomly initialised network with `num_classes` outputs (seeded)."""
    torch.manual_seed(derive_seed(cfg.seeds[0], t, 11))
    return accuracy(cfg.model.build(num_classes), loader, accelerator)
