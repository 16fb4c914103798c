"""Does a long task sequence scale (issue 16)? For every method of a finished incremental stage: accuracy of each
new task, forgetting, stored bytes and training time per task, early in the sequence against late in it.

    python scripts/sequence_summary.py runs/permuted_fmnist/seed0/incremental [--window 10]

Per method, medians over the first and the last `window` tasks of: the accuracy of a task right after it was learned
(R[t][t]), the bytes the task added to the stored files (task 1 also stores what every task shares, so the first
window starts at task 2) and its training seconds; and whether every task's accuracy after the last task equals its
accuracy right after it (R[T-1][j] == R[j][j]: no forgetting). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summary(doc: dict, window: int) -> dict:
    R = doc["acc_matrix"]
    T = len(R)
    cumulative = doc["memory_bytes_cumulative"]
    added = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
    seconds = doc["train_seconds_per_task"]
    own = [R[t][t] for t in range(T)]

    def early_late(values: list[float], start: int = 0) -> tuple[float, float]:
        return statistics.median(values[start:start + window]), statistics.median(values[-window:])

    return {"tasks": T, "avg": doc["final_avg_acc"], "own": early_late(own), "kb": early_late(added, 1),
            "seconds": early_late(seconds), "first_kb": added[0] / 1e3,
            "no_forgetting": all(R[T - 1][j] == R[j][j] for j in range(T))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("incremental", type=Path, help="the incremental stage's folder (one folder per method)")
    parser.add_argument("--window", type=int, default=10, help="tasks in the early and the late window")
    args = parser.parse_args(argv)
    w = args.window
    print(f"| method | tasks | final avg acc (%) | new task acc (%), first {w} → last {w} | R[T-1][j] == R[j][j] "
          f"for every j | bytes a task, tasks 2-{w + 1} → last {w} (kB) | task 1 (kB) | train s a task, "
          f"first {w} → last {w} |")
    print("| --- | ---: | ---: | --- | --- | --- | ---: | --- |")
    for metrics in sorted(args.incremental.glob("*/metrics.json")):
        s = summary(json.loads(metrics.read_text()), w)
        print(f"| {metrics.parent.name} | {s['tasks']} | {100 * s['avg']:.1f} | {100 * s['own'][0]:.1f} → "
              f"{100 * s['own'][1]:.1f} | {'yes' if s['no_forgetting'] else 'NO'} | {s['kb'][0] / 1e3:.1f} → "
              f"{s['kb'][1] / 1e3:.1f} | {s['first_kb']:.0f} | {s['seconds'][0]:.1f} → {s['seconds'][1]:.1f} |")


if __name__ == "__main__":
    main()
