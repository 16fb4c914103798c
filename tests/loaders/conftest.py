"""The prepared units every loader test reads (prepared once for the package)."""

from __future__ import annotations

import pytest

from data_prep.prepare import prepare
from tests.data_prep.test_writers import tiny_source


@pytest.fixture(scope="package")
def prepared(tmp_path_factory):
    """4 classes -> tasks task00 (classes 0, 1) and task01 (2, 3) plus pretrain; 24/8 and 48/16 samples per
    split; 5 samples per shard so splits span several shards."""
    out = tmp_path_factory.mktemp("units")
    source = tiny_source(per_class=(12, 4), num_classes=4, size=(8, 8))
    prepare("tiny", None, out, ("wds", "ffcv"), "blocks", {"classes_per_task": 2}, source=source,
            max_per_shard=5, progress=False)
    return out, source
