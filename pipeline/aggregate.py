"""Aggregation over seeds: every number becomes mean and standard deviation, like the appendix tables of seed 004_
(three seeds per setting, rows "Mean" and "STD"; their STD is the sample standard deviation, n - 1 in the
denominator: e.g. 71.0, 71.3, 71.9 -> 0.46).

The structure of the per-seed documents is kept: dicts key by key, lists element by element, so an aggregated
metrics.json has the same keys as the metrics.json files it comes from. A number leaf becomes
{"mean", "std", "n", "values"} (std None for a single value; values in seed order, None where a seed lacks it);
None stays None; any other leaf stays as it is when every seed agrees and becomes {"values": [...]} otherwise.

Only runs of one config are aggregated (issue 19: a seed trained 6 epochs and one trained 2 were averaged into one
mean ± std): one_config refuses runs whose resolved configs differ in a setting that changes results, naming the
keys. Refused rather than grouped into rows of their own: pipeline.layout keeps every config in a folder of its own
(a variant), so runs of two configs in one folder are an accident to name, not a table to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PAPER = '"Neural Weight Search for Scalable Task Incremental Learning" (Jiang & Celiktutan, WACV 2023)'
STD_NOTE = f"sample standard deviation over seeds (n - 1), as the appendix tables of {PAPER}"


def one_config(runs: list[tuple[str, dict]]) -> None:
    """Raise ValueError when the resolved configs of `runs` ((where, config) pairs) are not one config, the settings
    that do not change results (pipeline.layout.NEUTRAL, the seed list among them) left out."""
    from pipeline.layout import comparable, describe, differences

    if not runs:
        return
    first_where, first = runs[0]
    for where, config in runs[1:]:
        diffs = differences(comparable(first), comparable(config))
        if diffs:
            labels = (f"in {Path(first_where).parent.name}", f"in {Path(where).parent.name}")
            raise ValueError(f"{where} and {first_where} are runs of different configs ({describe(diffs, labels)}); "
                             "they are not averaged into one mean ± std. Rerun one with the other's settings "
                             "(--replace), or run it as a variant (--variant NAME) in a folder of its own")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stat(values: list) -> dict:
    """{"mean", "std", "n", "values"} of the numbers among `values` (None entries are seeds without the value)."""
    nums = [float(v) for v in values if v is not None]
    mean = sum(nums) / len(nums)
    std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1)) if len(nums) > 1 else None
    return {"mean": mean, "std": std, "n": len(nums), "values": list(values)}


def aggregate(values: list) -> Any:
    """One aggregated value from the same entry of every seed's document (see the module docstring)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(is_number(v) for v in present):
        return stat(values)
    if all(isinstance(v, list) for v in present) and len({len(v) for v in present}) == 1:
        return [aggregate([None if v is None else v[i] for v in values]) for i in range(len(present[0]))]
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: aggregate([None if v is None else v.get(k) for v in values]) for k in keys}
    if len(present) == len(values) and all(v == present[0] for v in present):
        return present[0]
    return {"values": list(values)}


def seed_values(value: Any) -> list:
    """The per-seed values of an aggregated number; a plain number (a single seed's) is its only value."""
    return value["values"] if isinstance(value, dict) and "values" in value else [value]


def mean(value: Any) -> Any:
    """The mean of an aggregated number (a plain number passes through), elementwise through lists; None stays."""
    if isinstance(value, list):
        return [mean(v) for v in value]
    if isinstance(value, dict) and "mean" in value:
        return value["mean"]
    return value


def std(value: Any) -> Any:
    """The standard deviation of an aggregated number (None for a single seed or a plain number), elementwise."""
    if isinstance(value, list):
        return [std(v) for v in value]
    if isinstance(value, dict) and "std" in value:
        return value["std"]
    return None
