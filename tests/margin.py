"""Bounds on measured quantities (trained accuracies, loss gaps, size ratios), recorded so their margins can be read.

A test whose result depends on float arithmetic (another CPU, another thread count, another seed) asserts through
`above`/`below` instead of a bare comparison. With NWS_TEST_MARGINS=<file> set, every check appends one JSON line
(test, name, value, bound, direction, seed, threads, cpu) to that file, so `scripts/test_margins.py` can run the
checks over seeds and thread settings and print, per check, the spread and the margin over its bound. Without it,
these are plain asserts.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import SEED, THREADS
from tests.machine import cpu_model


def _record(name: str, value: float, bound: float, direction: str) -> None:
    path = os.environ.get("NWS_TEST_MARGINS")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" (")[0]
    line = {"test": test, "name": name, "value": float(value), "bound": float(bound), "direction": direction,
            "seed": SEED, "threads": THREADS, "cpu": cpu_model()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def above(name: str, value: float, bound: float) -> None:
    """Assert value > bound (a quality floor: accuracy, inference rate), recording the margin."""
    _record(name, value, bound, ">")
    if not value > bound:
        pytest.fail(f"{name}: {value:.6g} is not above its bound {bound:.6g}")


def below(name: str, value: float, bound: float) -> None:
    """Assert value < bound (a gap or error ceiling), recording the margin."""
    _record(name, value, bound, "<")
    if not value < bound:
        pytest.fail(f"{name}: {value:.6g} is not below its bound {bound:.6g}")
