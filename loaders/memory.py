"""The in-memory baseline: every decoded image of a split held in one uint8 tensor, batches by indexing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_prep.manifest import files_dir, read_unit, verify_files
from data_prep.write_wds import decode_image
from loaders.ffcv import FfcvLoader
from loaders.unit import UnitLoader


def read_all(unit_dir, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a unit's split, in write order, as one uint8 NxHxWx3 tensor, and the labels; decoded from
    the webdataset shards (or the .beton when the unit has no shards). Needs fixed-size images."""
    unit_dir = Path(unit_dir)
    entry = read_unit(unit_dir)
    split_entry = entry["splits"][split]
    if entry["image_size"] is None:
        raise ValueError(f"{unit_dir}: images of varying size cannot be stacked in memory; prepare the unit "
                         "with --image-size")
    n, (h, w) = split_entry["num_samples"], entry["image_size"]
    folder = files_dir(unit_dir, entry)
    images = torch.empty(n, h, w, 3, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    if "wds" in split_entry:
        # the whole split is read anyway: its shards are re-hashed against the manifest first (issue 17)
        problems = verify_files(folder, split_entry["wds"]["shards"])
        if problems:
            raise ValueError(f"{problems[0]}: the data is damaged; prepare it again (nws data prepare rebuilds the "
                             "unit)" + (f" ({len(problems) - 1} more)" if len(problems) > 1 else ""))
        pos = 0
        for sample in _read_shards([folder / s["path"] for s in split_entry["wds"]["shards"]]):
            images[pos].numpy()[:] = sample[0]
            labels[pos] = sample[1]
            pos += 1
        if pos != n:
            raise ValueError(f"{unit_dir}: shards of split {split!r} hold {pos} samples, manifest says {n}")
    else:
        loader = FfcvLoader(unit_dir, split, batch_size=512, num_workers=1, mean=[0, 0, 0], std=[1, 1, 1],
                            with_index=True)
        for x, y, idx in loader._batches():
            images[idx] = x.permute(0, 2, 3, 1)
            labels[idx] = y
    return images, labels


def _read_shards(paths: list[Path]) -> Iterator[tuple[np.ndarray, int, str]]:
    import webdataset as wds

    for sample in wds.WebDataset([str(p) for p in paths], shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, empty_check=False):
        data = sample.get("png", sample.get("jpg"))
        if data is None:
            raise ValueError(f"{sample['__url__']}: sample {sample['__key__']} has no png or jpg member")
        yield decode_image(data), int(sample["cls"]), sample["__key__"]


class MemoryLoader(UnitLoader):
    """The in-memory baseline: all decoded images of the split in one contiguous uint8 NCHW tensor, batches by
    indexing."""

    def __init__(self, unit_dir, split: str, **kw):
        super().__init__(unit_dir, split, **kw)
        images, self.labels = read_all(self.unit_dir, split)
        self.images = images.permute(0, 3, 1, 2).contiguous()

    def _batches(self):
        for b in self._index_batches(self._positions()):
            idx = torch.from_numpy(b)
            yield self.images[idx], self.labels[idx], idx

