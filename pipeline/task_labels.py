"""How the report names a task: by its classes where tasks.json knows them, since a generated name (`task00`)
says nothing about what was learned, while "0,1" or "T-shirt/top,Trouser" does.

A task named by its source (a CIFAR-100 superclass, a dataset of CUB-to-Sketches, an explicit name in the config)
keeps that name: it already says what the task is, and its classes would be a long list. A task of a family
(permuted, rotated) has every class, so its transform names it (`perm 3`, `rot 36°`). Without tasks.json (the data
folder moved or removed) every task keeps its name.
"""

from __future__ import annotations

import re
from pathlib import Path

from data_prep.task_transform import describe
from data_prep.tasks import Task, load_tasks

GENERATED = re.compile(r"task\d+")  # the names data_prep.tasks gives blocks, random and unnamed explicit tasks
MAX_CLASSES = 4  # a label lists at most this many classes, then how many there are


def label(task: Task) -> str:
    """"0,1" for a generated name; the first classes and the count when there are many; a family task's transform;
    the given name otherwise."""
    if not GENERATED.fullmatch(task.name):
        return task.name
    if task.transform is not None:
        return describe(task.transform)
    names = task.class_names
    if len(names) <= MAX_CLASSES:
        return ",".join(names)
    return ",".join(names[: MAX_CLASSES - 1]) + f",... ({len(names)} classes)"


def task_labels(tasks: list[str], tasks_json: Path) -> list[str]:
    """The label of every task name in `tasks` (the order of metrics.json); a name tasks.json does not hold, or
    labels that would not tell two tasks apart, fall back to the names. A tasks.json that cannot be read is an
    error naming the file (the report is not written with silently different labels)."""
    if not tasks_json.is_file():
        return list(tasks)
    known = {t.name: label(t) for t in load_tasks(tasks_json)[0]}
    labels = [known.get(name, name) for name in tasks]
    return labels if len(set(labels)) == len(labels) else list(tasks)
