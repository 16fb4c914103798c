"""miniImageNet in the Ravi & Larochelle layout: `images/` plus `train.csv`, `val.csv`, `test.csv`, each with
the header `filename,label` (label = wnid). CL-with-DST (seed 003_) runs its 10-task miniImageNet on it.

The three csv files split the 100 classes (64/16/20), not the images, as few-shot learning wants; the splits
are served as given (train/val/test, classes = the sorted wnids of all three). Task-incremental learning needs
every class in train and test: option `test_fraction` pools the 60,000 images and draws a seeded stratified
train/test split per class instead."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from data_prep.sources.common import (
    FileLoader,
    SubsetLoader,
    file_keys,
    require_dir,
    require_root,
    stratified_split,
)
from data_prep.types import LayoutError, Source, Split

SPLITS = ("train", "val", "test")
EXPECTED = "images/<file>.jpg plus train.csv, val.csv, test.csv with the header filename,label (wnid labels)"


def open_miniimagenet(root=None, test_fraction: float | None = None, seed: int = 0) -> Source:
    root = require_root("miniimagenet", root, EXPECTED)
    images = require_dir(root / "images", EXPECTED)
    rows = {split: _read_csv(root / f"{split}.csv") for split in SPLITS}
    on_disk = set(os.listdir(images))
    missing = [f for split in SPLITS for f, _ in rows[split] if f not in on_disk]
    if missing:
        raise LayoutError(f"{images}: {len(missing)} files named in the csv files are missing "
                          f"(e.g. {missing[:3]}); expected {EXPECTED}")
    listed = [f for split in SPLITS for f, _ in rows[split]]
    if len(set(listed)) != len(listed):
        twice = sorted(_dupes(listed))
        raise LayoutError(f"{root}: files listed more than once in the csv files: {twice[:3]}")
    classes = sorted({w for split in SPLITS for _, w in rows[split]})
    class_id = {w: i for i, w in enumerate(classes)}
    splits = {}
    for split in SPLITS:
        names = [f for f, _ in rows[split]]
        labels = np.asarray([class_id[w] for _, w in rows[split]], dtype=np.int64)
        loader = FileLoader([str(images / f) for f in names], file_keys(names), labels)
        splits[split] = Split(labels=labels, load=loader)
    if test_fraction is not None:
        names = [f for split in SPLITS for f, _ in rows[split]]
        labels = np.concatenate([splits[s].labels for s in SPLITS])
        whole = FileLoader([str(images / f) for f in names], file_keys(names), labels)
        train, test = stratified_split(labels, test_fraction, seed)
        splits = {"train": Split(labels=labels[train], load=SubsetLoader(whole, train)),
                  "test": Split(labels=labels[test], load=SubsetLoader(whole, test))}
    return Source(name="miniimagenet", classes=classes, splits=splits)


def _dupes(names: list[str]) -> set[str]:
    seen, twice = set(), set()
    for n in names:
        (twice if n in seen else seen).add(n)
    return twice


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, wnid) rows in file order; the file must exist, have the header and at least one row."""
    if not path.is_file():
        raise LayoutError(f"{path}: file not found; expected {EXPECTED}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise LayoutError(f"{path}: header {header}, expected filename,label")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise LayoutError(f"{path}:{line}: expected '<filename>,<wnid>', got {row}")
            rows.append((row[0], row[1]))
    if not rows:
        raise LayoutError(f"{path}: no rows; expected {EXPECTED}")
    return rows
