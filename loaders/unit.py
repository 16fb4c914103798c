"""What the three formats share: options, per-rank sizes, epochs, and the batched transform.

A format only says how to produce (uint8 NCHW images, labels, positions) batches for this rank (`_batches`); the
transform (normalise with the unit's train-split mean/std, augmentation, a family task's pixel transform) runs
here on whole batches after collation, so formats differ only in how pixels are stored (data_prep/augment.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_prep.augment import BatchTransform, policy_for
from data_prep.manifest import files_dir, read_unit, split_files, verify_files
from loaders.ranks import derive_seed, rank_share, resolve_rank

LARGE_IMAGE_SIZE = 224


class UnitLoader:
    """Common part of the three formats: options, per-rank sizes, epochs, and the batched transform."""

    def __init__(self, unit_dir, split: str, *, batch_size: int = 128, train: bool = False,
                 augment: bool | None = None, shuffle: bool | None = None, image_size: int | None = None,
                 mean=None, std=None, seed: int = 0, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, num_workers: int = 0, drop_last: bool = False,
                 with_index: bool = False):
        self.unit_dir = Path(unit_dir)
        self.entry = read_unit(self.unit_dir)
        if split not in self.entry["splits"]:
            raise KeyError(f"{self.unit_dir}: no split {split!r}; the unit has {sorted(self.entry['splits'])}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.split_entry = split, self.entry["splits"][split]
        self.files_dir = files_dir(self.unit_dir, self.entry)  # a view's files are its base unit's
        check_sizes(self.files_dir, self.split_entry)
        self.total = int(self.split_entry["num_samples"])
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, epoch
        self.augment = train if augment is None else augment
        self.shuffle = train if shuffle is None else shuffle
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.equal = train and self.world_size > 1
        self.num_workers, self.drop_last, self.with_index = num_workers, drop_last, with_index
        self.stored_size = self.entry["image_size"]  # [H, W], or None for variable sizes
        policy = policy_for(self.stored_size)
        if image_size is None:
            image_size = max(self.stored_size) if policy == "small" else LARGE_IMAGE_SIZE
        self.image_size = image_size
        try:
            self.transform = BatchTransform(policy, image_size, list(self.entry["mean"] if mean is None else mean),
                                            list(self.entry["std"] if std is None else std), self.augment,
                                            cropped=self.stored_size is None,
                                            task_transform=self.entry.get("transform"))
        except ValueError as e:
            raise ValueError(f"{self.unit_dir}: {e}") from None

    @property
    def classes(self) -> list[str]:
        return self.entry["classes"]["names"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_samples(self) -> int:
        """Samples this rank reads in the current epoch."""
        n, w = self.total, self.world_size
        return n // w if self.equal else len(range(self.rank, n, w))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, 1))
        for images, labels, index in self._batches():
            x = self.transform(images, gen)
            y = labels.to(torch.int64)
            yield (x, y, index.to(torch.int64)) if self.with_index else (x, y)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 NCHW images, labels, positions) batches of this rank for the current epoch."""
        raise NotImplementedError

    def _positions(self) -> np.ndarray:
        return rank_share(self.total, self.rank, self.world_size, self.shuffle, self.seed, self.epoch, self.equal)

    def _index_batches(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        stop = len(positions) // self.batch_size * self.batch_size if self.drop_last else len(positions)
        for start in range(0, stop, self.batch_size):
            yield positions[start:start + self.batch_size]


def check_sizes(unit_dir: Path, split_entry: dict) -> None:
    """Every file of the split present with the size the manifest records (a stat each, on every loader: a
    truncated or missing shard is named before anything is read); `nws data verify` re-hashes them all."""
    problems = verify_files(unit_dir, split_files(split_entry), rehash=False)
    if problems and problems[0].endswith(": missing"):
        raise FileNotFoundError(f"{problems[0]} (listed in {Path(unit_dir).parent / 'manifest.json'})")
    if problems:
        raise ValueError(f"{problems[0]}: the file is damaged; prepare the data again (nws data prepare re-hashes "
                         "and rebuilds the unit)")

