"""scikit-learn's digits (1,797 8x8 grey images, 10 classes): the embedded default data, so the pipeline
runs end to end with nothing downloaded. The dataset has no test split; a seeded stratified one is drawn."""

from __future__ import annotations

import numpy as np

from data_prep.sources.common import ArrayLoader, SubsetLoader, stratified_split
from data_prep.types import Source, Split


def open_digits(root=None, test_fraction: float = 0.2, seed: int = 0) -> Source:
    """`root` is ignored (the data ships inside scikit-learn). Pixels 0..16 are scaled by 255/16 and rounded
    to uint8, then replicated to 3 channels. Keys are the record's index in `load_digits()`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = data.target.astype(np.int64)
    splits = {}
    for name, idx in zip(("train", "test"), stratified_split(labels, test_fraction, seed), strict=True):
        splits[name] = Split(labels=labels[idx], load=SubsetLoader(ArrayLoader(grey, labels, 4), idx))
    return Source(name="digits", classes=[str(d) for d in range(10)], splits=splits)

