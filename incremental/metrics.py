"""Continual-learning metrics of an accuracy matrix (notes/frameworks.md §4).

R[i][j] is the test accuracy on task j after training through task i (0-based here), for j <= i; entries j > i
are None (a task-incremental model of task j does not exist before task j is learned). T = number of rows.
- final average accuracy (GEM "ACC", seed 004_ §5.2): mean_j R[T-1][j];
- average accuracy after step k (Chaudhry A_k): mean_{j<=k} R[k][j]; average incremental accuracy (iCaRL):
  mean_k A_k;
- forgetting (Chaudhry et al. 2018, Eq. 3, as FACIL): f_j = max over EARLIER rows l in [j, T-2] of R[l][j]
  minus R[T-1][j]; F = mean over j < T-1;
- backward transfer (GEM paper): BWT = 1/(T-1) Σ_{i<T-1} (R[T-1][i] - R[i][i]) (the official GEM code divides by
  T; Mammoth and this project by T-1).
Forgetting and BWT are None for a single task.
"""

from __future__ import annotations

Matrix = list[list[float | None]]


def check(R: Matrix) -> int:
    """T, after checking that R is T×T, filled on and below the diagonal, None above, values in [0, 1]."""
    T = len(R)
    if T == 0:
        raise ValueError("empty accuracy matrix")
    for i, row in enumerate(R):
        if len(row) != T:
            raise ValueError(f"accuracy matrix row {i} has {len(row)} entries, expected {T}")
        for j, v in enumerate(row):
            if (v is None) != (j > i):
                raise ValueError(f"R[{i}][{j}] = {v!r}: entries must be set exactly for j <= i")
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"R[{i}][{j}] = {v} is not an accuracy in [0, 1]")
    return T


def from_rows(rows: list[list[float]]) -> Matrix:
    """The T×T matrix from the evaluated rows (row i holds R[i][0..i])."""
    T = len(rows)
    return [list(row) + [None] * (T - len(row)) for row in rows]


def final_avg_acc(R: Matrix) -> float:
    T = check(R)
    return sum(R[T - 1]) / T


def avg_acc_per_step(R: Matrix) -> list[float]:
    check(R)
    return [sum(R[k][: k + 1]) / (k + 1) for k in range(len(R))]


def avg_incremental_acc(R: Matrix) -> float:
    steps = avg_acc_per_step(R)
    return sum(steps) / len(steps)


def forgetting_per_task(R: Matrix) -> list[float]:
    T = check(R)
    return [max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]


def forgetting(R: Matrix) -> float | None:
    f = forgetting_per_task(R)
    return sum(f) / len(f) if f else None


def bwt(R: Matrix) -> float | None:
    T = check(R)
    if T < 2:
        return None
    return sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def fwt_per_task(before: list[float | None], random: list[float | None]) -> list[float | None]:
    """Entry i-1: R[i-1][i] - b_i for tasks i = 1..T-1 (None where either was not measured)."""
    if len(before) != len(random):
        raise ValueError(f"{len(before)} accuracies before learning, {len(random)} of the random model")
    return [None if a is None or b is None else a - b for a, b in zip(before[1:], random[1:], strict=True)]


def fwt(before: list[float | None], random: list[float | None]) -> float | None:
    f = fwt_per_task(before, random)
    return sum(f) / len(f) if f and None not in f else None


def summary(R: Matrix, before: list[float | None] | None = None, random: list[float | None] | None = None) -> dict:
    """The metrics of R; FWT too from `before` and `random` (one entry per task; None: not measured)."""
    T = check(R)
    before, random = before or [None] * T, random or [None] * T
    return {"acc_matrix": R, "final_avg_acc": final_avg_acc(R), "avg_incremental_acc": avg_incremental_acc(R),
            "avg_acc_per_step": avg_acc_per_step(R), "forgetting": forgetting(R),
            "forgetting_per_task": forgetting_per_task(R), "bwt": bwt(R), "fwt": fwt(before, random),
            "fwt_per_task": fwt_per_task(before, random), "acc_before_learning": before, "acc_random_init": random}
