"""Is a task's accuracy above chance? A one-sided binomial test, so that a method at chance is never silent (issue 14).

A task model that learned nothing still scores about 1/v on a v-class task (it guesses, or predicts one class of a
balanced split): PackNet's task00 = 50.0% on two-class digits, SupSup and DST at exactly 50.0% on every task. Such a
number in a table of 95% entries reads as "a weaker method", not as "a broken one". The test: under H0 every one of
the n test images is classified correctly with probability 1/v, so the number of correct images is
X ~ Binomial(n, 1/v), and the p-value of the observed count k is P(X >= k) (exact tail, scipy.stats.binomtest).
A task is *at chance* (flagged) when p >= ALPHA: its accuracy is not significantly above 1/v. The tested accuracy
is the one the tables report, the last row of the accuracy matrix R[T-1][j] (metrics.py), measured on the task
model rebuilt from its stored files; its count is k = round(R * n) (R = k / n exactly, so the rounding is exact).

metrics.json carries what the test needs per task (`test_samples` n, `task_classes` v, incremental/loop.py); a
metrics.json written before those fields existed cannot be tested, and `check_run` says so instead of guessing.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from scipy.stats import binomtest

from nws import exits

ALPHA = 0.01
EXIT_CODE = exits.AT_CHANCE  # --strict: a task at chance (nws.exits)
MARK = "*"
TEST = "one-sided binomial test of the correct test images against 1/classes (H0: accuracy = chance)"
LEGEND = f"{MARK} not significantly above chance: {TEST}, p >= {ALPHA}"
NO_SIZES = ("its metrics.json has no per-task test-set sizes and class counts (test_samples, task_classes: written "
            "before they were recorded); rerun the incremental stage to test it against chance")


def binomial_p(correct: int, n: int, classes: int) -> float:
    """P(X >= correct) for X ~ Binomial(n, 1/classes): the one-sided p-value of `correct` right answers."""
    if not 0 <= correct <= n or n < 1 or classes < 1:
        raise ValueError(f"binomial test needs 0 <= correct <= n, n >= 1, classes >= 1; got {correct}, {n}, {classes}")
    return float(binomtest(correct, n, 1.0 / classes, alternative="greater").pvalue)


@dataclass
class Cell:
    """One reported accuracy (a method's final accuracy on one task, in one seed run) and its test."""

    method: str
    task: str
    seed: int | None
    accuracy: float
    correct: int
    n: int
    classes: int
    chance: float
    p_value: float
    flagged: bool

    @property
    def label(self) -> str:
        """method/task, or method/seed<S>/task: how a flagged cell is named in tags and lists."""
        return "/".join([self.method] + ([] if self.seed is None else [f"seed{self.seed}"]) + [self.task])

    def warning(self) -> str:
        where = self.method if self.seed is None else f"{self.method} seed{self.seed}"
        return (f"WARNING: {where} {self.task}: {100 * self.accuracy:.1f}% on {self.n} test images is not above "
                f"chance ({100 * self.chance:.1f}%, binomial p={self.p_value:.2g})")

    def to_dict(self) -> dict:
        return asdict(self)


def make_cell(method: str, task: str, seed: int | None, accuracy: float, n: int, classes: int,
              alpha: float = ALPHA) -> Cell:
    correct = round(accuracy * n)
    p = binomial_p(correct, n, classes)
    # a one-class task cannot be above chance; it is not a method's failure, so it is never flagged
    return Cell(method, task, seed, accuracy, correct, n, classes, 1.0 / classes, p, classes > 1 and p >= alpha)


def check_run(doc: dict, seed: int | None = None, alpha: float = ALPHA) -> tuple[list[Cell], str | None]:
    """The test of every task of one metrics.json (its last accuracy-matrix row): (cells, None), or ([], why not)
    for a metrics.json without the per-task test-set sizes."""
    tasks, final = doc["tasks"], doc["acc_matrix"][-1]
    sizes, classes = doc.get("test_samples"), doc.get("task_classes")
    if not (isinstance(sizes, list) and isinstance(classes, list) and len(sizes) == len(classes) == len(tasks)):
        return [], NO_SIZES
    method = doc.get("method", "?")
    return [make_cell(method, t, seed, a, int(n), int(v), alpha)
            for t, a, n, v in zip(tasks, final, sizes, classes, strict=True)], None


def summary(cells: list[Cell], alpha: float = ALPHA) -> dict:
    """What metrics.json keeps of the test: the flagged task names and every task's p-value."""
    return {"alpha": alpha, "test": TEST, "flagged": [c.task for c in cells if c.flagged],
            "p_values": [c.p_value for c in cells]}


def mark(text: str, flagged: bool) -> str:
    return text + MARK if flagged else text


def warn(cells: list[Cell], file=None) -> None:
    """One WARNING line on stderr per flagged cell."""
    for c in cells:
        if c.flagged:
            print(c.warning(), file=file or sys.stderr, flush=True)
