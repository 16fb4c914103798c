"""Helpers shared by the loader tests: read a loader to the end, and what it must give computed from the source."""

from __future__ import annotations

import numpy as np
import torch

from data_prep.manifest import read_unit
from data_prep.prepare import write_order
from data_prep.tasks import Task

FORMATS = ("wds", "ffcv", "memory")
# numba's known harmless finalizer KeyError at FFCV teardown
FFCV_TEARDOWN = "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"


def collect(loader):
    xs, ys, idx = [], [], []
    for x, y, i in loader:
        xs.append(x)
        ys.append(y)
        idx.append(i)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


def expected(out, source, unit: str, split: str):
    """What a loader must give without augmentation, computed from the source: the records in write order,
    task labels, and (x/255 - mean)/std with the manifest's statistics."""
    entry = read_unit(out / unit)
    task = Task(unit, entry["classes"]["names"], entry["classes"]["ids"])
    order = write_order(source.splits[split], task, unit, split, 0)
    images = np.stack([source.splits[split].load(int(i)).image for i in order]).astype(np.float64) / 255
    x = (images - np.array(entry["mean"])) / np.array(entry["std"])
    y = np.array([task.remap(source.splits[split].labels[i]) for i in order])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float(), torch.from_numpy(y)
