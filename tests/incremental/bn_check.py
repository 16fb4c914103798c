"""Checks shared by the method tests: a stored task's BatchNorm statistics are those of its stored weights."""

from __future__ import annotations

import copy

import torch

from incremental.evaluate import accuracy
from incremental.loop import make_accelerator, task_list
from incremental.methods import make_method
from incremental.methods._bn_stats import batchnorms, recalibrate_batchnorm, recalibrate_task
from loaders import make_loader


def method_of(name, cfg, digits, pretrained, out):
    """The method object of a finished run in `out` (to rebuild its stored tasks)."""
    return make_method(name, cfg, digits, pretrained, out / name, task_list(digits, cfg.incremental.num_tasks))


def assert_statistics_match_weights(m, t: int) -> None:
    """Task t rebuilt from its files has the BN statistics that re-estimating them over its training data (the
    same batches the method uses) gives for the stored weights."""
    stored = m.rebuild(t, m.ctx.task_dir(t)).eval()
    fresh = copy.deepcopy(stored)
    assert recalibrate_task(fresh, m.ctx, t) > 0
    for a, b in zip(batchnorms(stored), batchnorms(fresh), strict=True):
        assert torch.allclose(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)


def accuracy_with_fresh_statistics(m, t: int) -> float:
    """Test accuracy of task t's stored weights with BN statistics averaged over its whole training split in
    file order (other batches than the method's), an independent reference for the stored model's accuracy."""
    model = m.rebuild(t, m.ctx.task_dir(t))
    unit = m.ctx.data_dir / m.ctx.tasks[t].name
    recalibrate_batchnorm(model, make_loader(unit, "train", "memory", batch_size=64), max_batches=None)
    acc = make_accelerator(m.ctx.cfg.incremental)
    return accuracy(model, make_loader(unit, "test", "memory", batch_size=256), acc)


__all__ = ["assert_statistics_match_weights", "method_of", "accuracy_with_fresh_statistics"]
