"""The data behind the report's two headline figures, from results.json's aggregated methods (pipeline.aggregate),
kept apart from the drawing so that what a figure shows can be checked as numbers:

- accuracy against memory: one point per method, final average accuracy against the total memory of the stored
  files, mean ± std over seeds (the paper's message at a glance: NWS's accuracy at a fraction of the memory), and a
  second point at the memory of the same files coded (incremental.coded; none for runs made before it);
- average accuracy against the number of tasks: after each task t, the average accuracy over the tasks learned so
  far, A_t = mean_{j<=t} R[t][j] (incremental.metrics.avg_acc_per_step), computed per seed and then averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from incremental.metrics import avg_acc_per_step
from nws.memory import MIB
from pipeline.aggregate import mean, seed_values, stat, std
from pipeline.export import coded_memory


@dataclass
class Point:
    """One method in the accuracy-memory plane: accuracy as a fraction, memory in MiB (as stored, and coded: None
    for runs made before incremental.coded); std None for one seed."""

    memory_mib: float
    memory_std: float | None
    accuracy: float
    accuracy_std: float | None
    coded_mib: float | None = None


def memory_accuracy(methods: dict[str, dict]) -> dict[str, Point]:
    """{method: Point} from results.json's `methods` (every method's aggregated metrics.json)."""
    out = {}
    for name, doc in methods.items():
        memory, acc = doc["memory_bytes"]["total"], doc["final_avg_acc"]
        spread = std(memory)
        coded = coded_memory(doc)
        out[name] = Point(mean(memory) / MIB, None if spread is None else spread / MIB, mean(acc), std(acc),
                          None if coded is None else mean(coded) / MIB)
    return out


def seed_matrices(matrix: list) -> list[list[list[float | None]]]:
    """The per-seed accuracy matrices of an aggregated one (cells {"values": [...]} or, for one seed, numbers)."""
    cells = [v for row in matrix for v in row if v is not None]
    seeds = len(seed_values(cells[0]))
    return [[[None if v is None else seed_values(v)[s] for v in row] for row in matrix] for s in range(seeds)]


def avg_accuracy_curves(methods: dict[str, dict]) -> dict[str, tuple[list[float], list[float | None]]]:
    """{method: (mean, std)} of A_t for t = 1..T over the seeds of that method."""
    out = {}
    for name, doc in methods.items():
        steps = [avg_acc_per_step(R) for R in seed_matrices(doc["acc_matrix"])]
        stats = [stat([s[t] for s in steps]) for t in range(len(steps[0]))]
        out[name] = ([s["mean"] for s in stats], [s["std"] for s in stats])
    return out
