"""webdataset shards. Ranks get whole shards (`split_by_node`-style, shard order reshuffled per epoch) when there
are at least SHARDS_PER_READER per rank and worker; otherwise every rank streams all shards and keeps every
world-th sample (exact, at world_size x the reading)."""

from __future__ import annotations

import random

import numpy as np
import torch

from data_prep.augment import crop_to_size
from data_prep.write_wds import decode_image
from loaders.ranks import derive_seed
from loaders.unit import UnitLoader

SHUFFLE_BUFFER = 2000
# webdataset deals whole shards only when every reader (rank x worker) gets at least this many: ranks then differ
# by at most one shard in a ~4-shard share, so cutting them to equal counts for training drops little
SHARDS_PER_READER = 4


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
