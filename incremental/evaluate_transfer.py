"""The two accuracies of forward transfer (GEM, Lopez-Paz & Ranzato 2017; notes/frameworks.md §4), measured
before task t trains: the one exception to "every accuracy comes from the stored files" (DESIGN §5), since neither
model is a stored task model, and neither enters the accuracy matrix.

- before (GEM's R[t-1, t]): the network the method sets up for task t (`setup_task(t)`: what earlier tasks left,
  with task t's fresh head), before any step, on task t's test split;
- random (GEM's b̄_t): a randomly initialised network of the configured architecture with a head for task t,
  seeded from the run's seed and t (the same for every method), on the same split.

In multi-head task-incremental learning task t's head has not learned task t in either model, so FWT
(incremental.metrics.fwt) measures the head a method starts from more than transfer through the backbone. A fresh
head (Finetune, Sequential, SupSup's fresh scores) is a random direction over the features: near chance on average,
but on a two-class task one draw lands far from 50% in either direction. NWS starts task t from task t-1's head rows
(official reset_last_layer), whose class order is arbitrary for task t: on Fashion-MNIST 5×2 its R[t-1][t] was
75-100% (FWT +36%) while Finetune's was 50-65% (+4%), BENCHMARKS.md. That is why mask-based TIL papers rarely report
it; it is measured here because the continual-learning frameworks (Mammoth, Avalanche) do.
"""

from __future__ import annotations

import torch

from incremental import schedule
from incremental.evaluate import accuracy
from loaders import derive_seed


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
