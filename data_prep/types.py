"""The contract between readers (sources), task splits, writers and loaders.

A *source* reads one dataset in its official on-disk format and exposes its splits; a *sample* is one decoded
image with its original class id. Task splits (tasks.py) group original class ids into tasks and remap them to
0..v-1; writers store one task's samples per split; loaders read them back as normalised NCHW batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One image: `image` is HxWx3 uint8 RGB (grey sources are replicated to 3 channels)."""

    key: str  # unique within a split, stable across runs (e.g. the file's relative path or the record index)
    image: np.ndarray
    label: int  # ORIGINAL class id of the source (index into Source.classes)


@dataclass
class Split:
    """One split of a source. `labels[i]` is the original class of record i, known without decoding images,
    so a task's records can be selected without reading any other task's images."""

    labels: np.ndarray  # int64, one per record
    load: Callable[[int], Sample]  # decode record i; raises BadImage for a corrupt/truncated/zero-byte file

    def __len__(self) -> int:
        return len(self.labels)

    def iter_records(self, indices: np.ndarray) -> Iterator[Sample | BadImage]:
        """Yield the records at `indices` in order; bad images are yielded (not raised) so callers can skip and
        list them, or fail under --strict."""
        for i in indices:
            try:
                yield self.load(int(i))
            except BadImage as bad:
                yield bad


@dataclass
class Source:
    """A dataset as distributed: class names (index = original class id) and its splits ("train", "test", ...)."""

    name: str
    classes: list[str]
    splits: dict[str, Split]
    # optional class grouping used by the group task split: class id -> group name (the superclass for
    # Split-CIFAR-100, the dataset for CUB-to-Sketches); groups become tasks in first-seen class order
    groups: dict[int, str] = field(default_factory=dict)


class BadImage(Exception):
    """A record whose image cannot be decoded; `path` names the file (or record) and `reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LayoutError(ValueError):
    """The input is not laid out as the source expects; the message names the path and the expected layout."""
