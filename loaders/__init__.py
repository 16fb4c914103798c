"""The runtime loaders: one API over the prepared units, whichever format the data stage wrote.

`make_loader(unit_dir, split, fmt, ...)` yields (x, y): x float32 NCHW normalised with the unit's train-split
mean/std (manifest), y int64 task-local labels; with `with_index=True` also each sample's position in the split's
write order (the same in every format). One file per format (wds, ffcv, memory) over their common part (unit);
which samples each DDP rank reads is loaders.ranks. Augmentation runs batched in torch after collation
(data_prep/augment.py).

A task of a family (permuted, rotated) is a view in the manifest (data_prep.manifest): its loader reads the files
of the unit it is a view of and applies the task's transform to every batch, in every format, for every split.

The prepared-data format (manifest, augmentation, task transforms, image decoding) stays in data_prep; this
package reads it at training time, and nothing in data_prep imports it.
"""

from __future__ import annotations

from loaders.ffcv import FfcvLoader
from loaders.memory import MemoryLoader, read_all
from loaders.ranks import derive_seed, rank_share, resolve_rank
from loaders.unit import UnitLoader
from loaders.wds import WdsLoader

__all__ = ["FORMATS", "LOADERS", "FfcvLoader", "MemoryLoader", "UnitLoader", "WdsLoader", "derive_seed",
           "make_loader", "rank_share", "read_all", "resolve_rank"]

FORMATS = ("wds", "ffcv", "memory")

LOADERS = {"wds": WdsLoader, "ffcv": FfcvLoader, "memory": MemoryLoader}


def make_loader(unit_dir, split: str, fmt: str = "wds", **kw) -> UnitLoader:
    """The loader of `fmt` (wds | ffcv | memory) for one prepared unit (`<out>/<unit>`) and split. Keyword
    options: batch_size, train (sets augment/shuffle/equal per-rank counts), augment, shuffle, image_size (model
    input; default the stored size for small images, 224 for large), mean/std (default: the manifest's), seed,
    epoch, rank/world_size (default: torch.distributed, then RANK/WORLD_SIZE), num_workers, drop_last,
    with_index (also yield each sample's position in the split). A family task's transform is applied (and
    augmentation refused for it) from its manifest entry."""
    if fmt not in LOADERS:
        raise ValueError(f"unknown loader format {fmt!r}; expected one of {FORMATS}")
    return LOADERS[fmt](unit_dir, split, **kw)
