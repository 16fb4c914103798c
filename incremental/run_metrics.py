"""What a method's MLflow run shows after each task (issue 19): one step per learned task, step = number of tasks
learned (t + 1 after task t), so the UI's charts draw every metric against the tasks.

At step t + 1, from the rows R[0..t] of the accuracy matrix evaluated so far (incremental.metrics):
- `acc/taskJJ` = R[t][j] for every j <= t (the whole row), `acc_new_task` = R[t][t], `avg_acc` = mean_j R[t][j];
- `forgetting/taskJJ` for j < t: the largest earlier accuracy on task j minus R[t][j] (Chaudhry, as metrics.py),
  and its mean `forgetting` and `bwt` (GEM) from the second task on;
- `memory_bytes`: the bytes of the files tasks 0..t are rebuilt from, measured when task t was stored;
- `train_seconds_task`: the training time of task t;
- from the second task on, where measured (incremental.evaluate_transfer): `fwt/taskJJ` = R[t-1][t] - b_t of the
  new task and `fwt`, GEM's forward transfer over tasks 1..t (incremental.metrics.fwt; in multi-head
  task-incremental learning it measures the head task t starts from, incremental.evaluate_transfer).
"""

from __future__ import annotations

from incremental import metrics

STEP_KEY = "avg_acc"  # logged last at each step: its history lists the steps already logged


def task_step(rows: list[list[float]], memory_bytes: int, train_seconds: float,
              before: list[float | None] | None = None, random: list[float | None] | None = None
              ) -> dict[str, float]:
    """The metrics of step len(rows) (after task t = len(rows) - 1), STEP_KEY last; `before` and `random` (one
    entry per task so far, None where not measured) give the FWT entries."""
    t = len(rows) - 1
    R = metrics.from_rows(rows)
    out = {f"acc/task{j:02d}": rows[t][j] for j in range(t + 1)}
    out["acc_new_task"] = rows[t][t]
    out.update({f"forgetting/task{j:02d}": f for j, f in enumerate(metrics.forgetting_per_task(R))})
    if t > 0:
        out.update({"forgetting": metrics.forgetting(R), "bwt": metrics.bwt(R)})
        before, random = before or [None] * (t + 1), random or [None] * (t + 1)
        new, fwt = metrics.fwt_per_task(before, random)[-1], metrics.fwt(before, random)
        out.update({**({} if new is None else {f"fwt/task{t:02d}": new}), **({} if fwt is None else {"fwt": fwt})})
    out.update({"memory_bytes": memory_bytes, "train_seconds_task": train_seconds, STEP_KEY: sum(rows[t]) / (t + 1)})
    return out
