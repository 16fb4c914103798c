"""The test against chance (incremental.chance): exact binomial tails worked out by hand, the decision at alpha 0.01,
and a metrics.json with and without the per-task test-set sizes."""

from math import comb

import pytest

from incremental import chance


def test_binomial_tail_known_values():
    # n = 10, p = 1/2: P(X >= 8) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = (45 + 10 + 1) / 1024
    assert chance.binomial_p(8, 10, 2) == pytest.approx(56 / 1024, rel=1e-12)
    assert chance.binomial_p(10, 10, 2) == pytest.approx(1 / 1024, rel=1e-12)
    assert chance.binomial_p(0, 10, 2) == pytest.approx(1.0)
    # n = 72, p = 1/2, k = 36 (the PackNet task00 at 50.0%): 1/2 + C(72,36) / 2^73 = 0.5469
    assert chance.binomial_p(36, 72, 2) == pytest.approx(0.5 + comb(72, 36) / 2 ** 73, rel=1e-12)
    # n = 4, p = 1/10, k = 2: 1 - P(0) - P(1) = 1 - 0.9^4 - 4 * 0.1 * 0.9^3 = 0.0523
    assert chance.binomial_p(2, 4, 10) == pytest.approx(1 - 0.9 ** 4 - 4 * 0.1 * 0.9 ** 3, rel=1e-12)
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        chance.binomial_p(11, 10, 2)


def test_the_decision_at_alpha_001():
    at_chance = chance.make_cell("packnet", "task00", None, 36 / 72, 72, 2)
    assert at_chance.flagged and at_chance.correct == 36 and at_chance.chance == 0.5
    assert at_chance.warning() == ("WARNING: packnet task00: 50.0% on 72 test images is not above chance "
                                   "(50.0%, binomial p=0.55)")
    # 47/72 = 65.3%: P(X >= 47) = 0.0064 < 0.01; 46/72 = 63.9%: 0.0122, not significant
    assert not chance.make_cell("m", "t", 0, 47 / 72, 72, 2).flagged
    assert chance.make_cell("m", "t", 0, 46 / 72, 72, 2).flagged
    # 10 classes, 100 images: 20% is above chance (p = 0.002), 15% is not (p = 0.073)
    assert not chance.make_cell("m", "t", 0, 0.20, 100, 10).flagged
    assert chance.make_cell("m", "t", 0, 0.15, 100, 10).flagged
    assert not chance.make_cell("m", "t", 0, 1.0, 50, 1).flagged  # a one-class task cannot be above chance
    assert chance.make_cell("m", "t", 3, 0.5, 72, 2).label == "m/seed3/t"


def test_a_metrics_json_is_tested_on_its_final_row_or_said_untestable():
    doc = {"method": "supsup", "tasks": ["task00", "task01"], "acc_matrix": [[0.5, None], [0.5, 0.98]],
           "test_samples": [72, 50], "task_classes": [2, 2]}
    cells, why = chance.check_run(doc, seed=1)
    assert why is None and [c.flagged for c in cells] == [True, False] and cells[1].correct == 49
    assert chance.summary(cells)["flagged"] == ["task00"]
    old = {k: v for k, v in doc.items() if k not in ("test_samples", "task_classes")}  # before they were recorded
    assert chance.check_run(old) == ([], chance.NO_SIZES)
