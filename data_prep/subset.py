"""A fixed number of images per class from a source's splits: the small-data experiment on any source.

`data.per_class: {train: 150}` keeps 150 training images of every class (all of them where a class has fewer) and
leaves the other splits whole, so a shipped config can be tried on a few images per class of a dataset it was tuned
on in full (issue 14: Fashion-MNIST with ~150 training images per class). The sample is a seeded permutation per
class taken from the labels alone, so no image outside the sample is decoded, and the same seed gives the same
images in every unit (a task unit's images are exactly the pretraining unit's images of its classes).
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from data_prep.types import Source, Split


def sample_per_class(labels: np.ndarray, count: int, seed: int, split_name: str) -> np.ndarray:
    """Sorted record indices: `count` of each class in `labels` (every record of a smaller class), drawn by a
    permutation seeded per (seed, split, class): a larger count keeps the smaller count's images."""
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, zlib.crc32(split_name.encode()), int(c)])
        keep.append(members[rng.permutation(len(members))[:count]])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def _view(split: Split, records: np.ndarray) -> Split:
    return Split(labels=split.labels[records], load=lambda i: split.load(int(records[i])))


def per_class(source: Source, counts: dict[str, int], seed: int = 0) -> Source:
    """`source` with the splits named in `counts` cut to that many images per class; a split name the source does
    not have is an error naming the key (`data.per_class.<split>`)."""
    unknown = sorted(set(counts) - set(source.splits))
    if unknown:
        raise ValueError(f"data.per_class.{unknown[0]}: {source.name} has no split {unknown[0]!r} "
                         f"(its splits: {', '.join(source.splits)})")
    for name, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"data.per_class.{name}: expected a positive number of images per class, got {n!r}")
    splits = {name: _view(split, sample_per_class(split.labels, counts[name], seed, name)) if name in counts
              else split for name, split in source.splits.items()}
    return replace(source, splits=splits)
