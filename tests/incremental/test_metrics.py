"""Metrics of a hand-made accuracy matrix, every number worked out by hand below."""

import pytest

from incremental import metrics

# rows = after task i; R[i][j] for j <= i
R = [[0.9, None, None],
     [0.8, 0.7, None],
     [0.6, 0.75, 0.5]]


def test_final_average_accuracy():
    assert metrics.final_avg_acc(R) == pytest.approx((0.6 + 0.75 + 0.5) / 3)


def test_average_incremental_accuracy():
    a = [0.9, (0.8 + 0.7) / 2, (0.6 + 0.75 + 0.5) / 3]
    assert metrics.avg_acc_per_step(R) == pytest.approx(a)
    assert metrics.avg_incremental_acc(R) == pytest.approx((0.9 + 0.75 + 1.85 / 3) / 3)


def test_forgetting_takes_the_max_over_earlier_rows_only():
    # task 0: max(0.9, 0.8) - 0.6 = 0.3; task 1: max(0.7) - 0.75 = -0.05 (the final row is not a candidate max,
    # so improving on a task gives negative forgetting, as in FACIL; including it would give 0)
    assert metrics.forgetting_per_task(R) == pytest.approx([0.3, -0.05])
    assert metrics.forgetting(R) == pytest.approx(0.125)


def test_backward_transfer_divides_by_t_minus_1():
    assert metrics.bwt(R) == pytest.approx(((0.6 - 0.9) + (0.75 - 0.7)) / 2)


# R[i-1][i] (the model before task i trains, above the diagonal of R) and b_i (a random model); entry 0 unused
BEFORE = [None, 0.55, 0.4]
RANDOM = [None, 0.5, 0.45]


def test_forward_transfer_divides_by_t_minus_1():
    # task 1: 0.55 - 0.5 = 0.05; task 2: 0.4 - 0.45 = -0.05; the mean over T - 1 = 2 tasks is 0
    assert metrics.fwt_per_task(BEFORE, RANDOM) == pytest.approx([0.05, -0.05])
    assert metrics.fwt(BEFORE, RANDOM) == pytest.approx(0.0)
    assert metrics.fwt([None, 0.9, 0.6], RANDOM) == pytest.approx((0.4 + 0.15) / 2)


def test_forward_transfer_of_unmeasured_tasks_or_one_task_is_none():
    assert metrics.fwt([None, None, 0.4], RANDOM) is None  # a task stored before FWT was measured
    assert metrics.fwt_per_task([None, None, 0.4], RANDOM) == pytest.approx([None, -0.05])
    assert metrics.fwt([None], [None]) is None
    with pytest.raises(ValueError, match="2 accuracies before learning, 3"):
        metrics.fwt([None, 0.5], RANDOM)
    s = metrics.summary(R)  # no transfer values given: a run made before FWT was measured
    assert s["fwt"] is None and s["fwt_per_task"] == [None, None] and s["acc_before_learning"] == [None] * 3


def test_single_task_has_no_forgetting_or_bwt():
    one = [[0.42]]
    assert metrics.final_avg_acc(one) == 0.42
    assert metrics.avg_incremental_acc(one) == 0.42
    assert metrics.forgetting(one) is None and metrics.bwt(one) is None


def test_from_rows_and_summary():
    full = metrics.from_rows([[0.9], [0.8, 0.7], [0.6, 0.75, 0.5]])
    assert full == R
    s = metrics.summary(full)
    assert s["acc_matrix"] == R and s["bwt"] == pytest.approx(-0.125)
    s = metrics.summary(full, BEFORE, RANDOM)
    assert s["fwt"] == pytest.approx(0.0) and s["acc_before_learning"] == BEFORE and s["acc_random_init"] == RANDOM


@pytest.mark.parametrize("bad", [
    [],
    [[0.5, 0.5]],                       # not square
    [[0.5, 0.1], [0.5, 0.5]],           # an entry above the diagonal
    [[0.5, None], [None, 0.5]],         # a missing entry below it
    [[1.5]],                            # not an accuracy
])
def test_malformed_matrices_are_refused(bad):
    with pytest.raises(ValueError):
        metrics.final_avg_acc(bad)
