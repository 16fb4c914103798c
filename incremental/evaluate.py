"""Test accuracy of stored task models, and only of those (DESIGN §5; issue 5).

`evaluate_stored` is the loop's one way to an accuracy: it verifies the task folder's and the shared files'
checksums, lets the method rebuild the task model from those files alone (told they are verified, so no byte is
hashed twice), and measures that model. There is no entry point that accepts an in-memory trained model, so no
reported number can come from one. The two accuracies of forward transfer, taken before a task trains and kept out
of the accuracy matrix, are measured on untrained task models (incremental.evaluate_transfer).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from incremental.stored import verify_shared, verify_task


@torch.no_grad()
def accuracy(model: nn.Module, loader, accelerator) -> float:
    """Top-1 accuracy over `loader` (this process's share), summed over all processes; autocast as in training."""
    model.eval().to(accelerator.device)
    counts = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with accelerator.autocast():
        for x, y in loader:
            pred = model(x.to(accelerator.device)).argmax(1)
            counts[0] += (pred == y.to(accelerator.device)).sum()
            counts[1] += y.numel()
    counts = accelerator.reduce(counts, reduction="sum")
    if counts[1] == 0:
        raise ValueError("the evaluation split is empty")
    return float(counts[0] / counts[1])


def evaluate_stored(method, t: int, loader, accelerator) -> float:
    """Accuracy of task t's model rebuilt from its stored artifact (checksums verified first)."""
    folder: Path = method.ctx.task_dir(t)
    verify_task(folder)
    verify_shared(method.ctx.method_dir)
    model = method.rebuild(t, folder, verified=True)  # the bytes just verified are not hashed again
    return accuracy(model, loader, accelerator)
