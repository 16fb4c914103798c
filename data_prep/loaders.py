"""One loader API over the prepared units: webdataset shards, FFCV .beton files, or all images held in memory.

`make_loader(unit_dir, split, fmt, ...)` yields (x, y): x float32 NCHW normalised with the unit's train-split
mean/std (manifest), y int64 task-local labels; with `with_index=True` also each sample's position in the split's
write order (the same in every format). Augmentation runs batched in torch after collation (data_prep/augment.py).

Several ranks (DDP): every rank reads a disjoint part each epoch. FFCV and memory deal positions like
DistributedSampler (a seeded permutation per epoch, then rank::world); webdataset deals whole shards
(`split_by_node`-style, shard order reshuffled per epoch) when there are at least 4 per rank and worker, otherwise
every rank streams all shards and keeps every world-th sample (exact, at world_size x the reading). For training
(`train=True`) all ranks are cut to the same number of samples so DDP steps stay in lock-step; evaluation keeps
every sample exactly once. FFCV runs on CPU (no ToDevice) with its own traversal order doing this dealing, so it
needs no torch.distributed group (FFCV's `distributed=True` would).

A task of a family (permuted, rotated) is a view in the manifest (data_prep.manifest): its loader reads the files
of the unit it is a view of and applies the task's transform to every batch, in every format, for every split.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_prep.augment import EVAL_CROP_RATIO, BatchTransform, crop_to_size, policy_for
from data_prep.manifest import files_dir, read_unit, split_files, verify_files
from data_prep.write_ffcv import keep_torch_threads
from data_prep.write_wds import decode_image

FORMATS = ("wds", "ffcv", "memory")
LARGE_IMAGE_SIZE = 224
SHUFFLE_BUFFER = 2000
# webdataset deals whole shards only when every reader (rank x worker) gets at least this many: ranks then differ
# by at most one shard in a ~4-shard share, so cutting them to equal counts for training drops little
SHARDS_PER_READER = 4


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit arguments, else the initialised torch.distributed group, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
    return rank, world_size


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def rank_share(n: int, rank: int, world: int, shuffle: bool, seed: int, epoch: int, equal: bool) -> np.ndarray:
    """Positions 0..n-1 this rank reads in `epoch`: a permutation seeded by (seed, epoch) (identical on every
    rank), cut to a multiple of `world` when `equal`, then every world-th from `rank`."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if equal:
        order = order[: n // world * world]
    return order[rank::world]


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


class FfcvLoader(UnitLoader):
    """FFCV's Loader on CPU (no ToDevice) with a traversal order that deals positions to ranks as
    `rank_share` does, so it needs no torch.distributed group and matches the memory loader exactly."""

    def __init__(self, unit_dir, split: str, **kw):
        super().__init__(unit_dir, split, **kw)
        if "ffcv" not in self.split_entry:
            raise FileNotFoundError(f"{self.unit_dir}: split {split!r} has no .beton; prepare with --format ffcv")
        self._loader = None

    def _make(self):
        with keep_torch_threads():
            from ffcv.fields.decoders import (
                CenterCropRGBImageDecoder,
                IntDecoder,
                RandomResizedCropRGBImageDecoder,
                SimpleRGBImageDecoder,
            )
            from ffcv.loader import Loader
            from ffcv.transforms import ToTensor

        size = (self.image_size, self.image_size)
        if self.stored_size is not None:
            decoder = SimpleRGBImageDecoder()
        elif self.augment:
            decoder = RandomResizedCropRGBImageDecoder(size)
        else:
            decoder = CenterCropRGBImageDecoder(size, ratio=EVAL_CROP_RATIO)
        pipelines = {"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()],
                     "index": [IntDecoder(), ToTensor()]}
        with keep_torch_threads():
            return Loader(str(self.files_dir / self.split_entry["ffcv"]["path"]), batch_size=self.batch_size,
                          num_workers=max(1, self.num_workers), order=_rank_order(self), drop_last=self.drop_last,
                          seed=self.seed, pipelines=pipelines)

    def _batches(self):
        if self._loader is None:
            self._loader = self._make()
        self._loader.next_epoch = self.epoch
        with keep_torch_threads() as threads:
            for images, labels, index in self._loader:  # FFCV reuses its output buffers: copy what outlives the step
                if torch.get_num_threads() != threads:  # FFCV's batch thread sets it when the epoch starts
                    torch.set_num_threads(threads)
                yield images.permute(0, 3, 1, 2), labels[:, 0].clone(), index[:, 0].clone()


def _rank_order(owner: UnitLoader):
    """An FFCV TraversalOrder instance (FFCV calls it with the Loader) whose epoch order is `owner._positions`."""
    from ffcv.traversal_order.base import TraversalOrder

    class RankOrder(TraversalOrder):
        def __init__(self):
            pass

        def __call__(self, loader):
            self.loader, self.indices = loader, loader.indices
            return self

        def sample_order(self, epoch: int):
            return rank_share(len(self.indices), owner.rank, owner.world_size, owner.shuffle, owner.seed, epoch,
                              owner.equal)

    return RankOrder()


class WdsLoader(UnitLoader):
    """webdataset shards read by `wds.WebDataset` (in-process, or in DataLoader workers when num_workers > 0);
    worker chunks are re-batched in the main process so batch sizes and per-rank counts are exact."""

    def __init__(self, unit_dir, split: str, **kw):
        super().__init__(unit_dir, split, **kw)
        if "wds" not in self.split_entry:
            raise FileNotFoundError(f"{self.unit_dir}: split {split!r} has no shards; prepare with --format wds")
        self.shards = self.split_entry["wds"]["shards"]

    def _plan(self) -> tuple[list[int], bool, list[int]]:
        """(shard order of this epoch, whether whole shards are dealt to ranks, samples per rank)."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        by_shard = len(order) >= SHARDS_PER_READER * self.world_size * max(1, self.num_workers)
        if by_shard:
            counts = [sum(self.shards[i]["num_samples"] for i in order[r::self.world_size])
                      for r in range(self.world_size)]
        else:
            counts = [len(range(r, self.total, self.world_size)) for r in range(self.world_size)]
        return order, by_shard, counts

    @property
    def num_samples(self) -> int:
        counts = self._plan()[2]
        return min(counts) if self.equal else counts[self.rank]

    def _batches(self):
        import webdataset as wds

        order, by_shard, _ = self._plan()
        starts = np.cumsum([0] + [s["num_samples"] for s in self.shards])
        offset = {str(self.files_dir / s["path"]): int(starts[i]) for i, s in enumerate(self.shards)}
        rank, world = self.rank, self.world_size

        def nodes(src):
            yield from (_islice(src, rank, world) if by_shard else src)

        def workers(src):
            worker, nw = _worker_info()
            yield from (_islice(src, worker, nw) if by_shard else src)

        dataset = wds.WebDataset([str(self.files_dir / self.shards[i]["path"]) for i in order], shardshuffle=False,
                                 nodesplitter=nodes, workersplitter=workers, empty_check=False)
        dataset.append(lambda src: self._samples(src, offset, by_shard))
        if self.num_workers > 0:
            stream = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
        else:
            stream = dataset
        yield from self._rebatch(stream, self.num_samples)

    def _samples(self, src, offset: dict[str, int], by_shard: bool):
        """Worker side: keep this rank's/worker's samples, decode, crop variable sizes, shuffle, chunk."""
        worker, nw = _worker_info()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, 2, worker))
        rng = random.Random(derive_seed(self.seed, self.epoch, self.rank, 3, worker))

        def decoded():
            url, within = None, 0
            for p, sample in enumerate(src):
                within = within + 1 if sample["__url__"] == url else 0
                url = sample["__url__"]
                if not by_shard and (p % self.world_size != self.rank or (p // self.world_size) % nw != worker):
                    continue
                image = decode_image(sample.get("png", sample.get("jpg")))
                if self.stored_size is None:
                    image = crop_to_size(image, self.image_size, self.augment, gen)
                yield image, int(sample["cls"]), offset[url] + within

        items = _buffer_shuffle(decoded(), SHUFFLE_BUFFER, rng) if self.shuffle else decoded()
        chunk: list = []
        for item in items:
            chunk.append(item)
            if len(chunk) == self.batch_size:
                yield _collate(chunk)
                chunk = []
        if chunk:
            yield _collate(chunk)

    def _rebatch(self, stream, limit: int):
        """Exact batches of `batch_size` from worker chunks, stopping after `limit` samples."""
        bs, buf, given = self.batch_size, None, 0
        for chunk in stream:
            chunk = tuple(torch.as_tensor(t) for t in chunk)
            buf = chunk if buf is None else tuple(torch.cat([a, b]) for a, b in zip(buf, chunk, strict=True))
            while len(buf[1]) >= bs and given + bs <= limit:
                yield tuple(t[:bs] for t in buf)
                buf, given = tuple(t[bs:] for t in buf), given + bs
            if given + len(buf[1]) >= limit:
                break
        left = 0 if buf is None else min(len(buf[1]), limit - given)
        if left > 0 and not self.drop_last:
            yield tuple(t[:left] for t in buf)


def _collate(items):
    return (np.stack([it[0] for it in items]).transpose(0, 3, 1, 2), np.array([it[1] for it in items], dtype=np.int64),
            np.array([it[2] for it in items], dtype=np.int64))


def _islice(src, start: int, step: int):
    for i, item in enumerate(src):
        if i % step == start:
            yield item


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _buffer_shuffle(items, size: int, rng: random.Random):
    """webdataset-style shuffle: keep `size` items, emit a random one as each new item arrives."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(len(buf))
        buf[k], item = item, buf[k]
        yield item
    rng.shuffle(buf)
    yield from buf


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
