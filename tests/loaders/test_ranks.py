"""Ranks and workers read disjoint parts of a split: dealt positions or whole shards, from explicit arguments, the
environment or a torch.distributed group."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loaders import make_loader, rank_share
from tests.loaders.fixtures import FFCV_TEARDOWN, FORMATS, collect

pytestmark = pytest.mark.filterwarnings(FFCV_TEARDOWN)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_parts(prepared, fmt, world):
    out, _ = prepared
    n = 48
    parts = [collect(make_loader(out / "pretrain", "train", fmt, batch_size=4, with_index=True, rank=r,
                                 world_size=world))[2].tolist() for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(n))  # eval: every sample exactly once
    train_parts = []
    for r in range(world):
        loader = make_loader(out / "pretrain", "train", fmt, batch_size=4, train=True, with_index=True, rank=r,
                             world_size=world, epoch=2)
        idx = collect(loader)[2].tolist()
        assert len(idx) == loader.num_samples
        train_parts.append(idx)
    sizes = {len(p) for p in train_parts}
    assert len(sizes) == 1  # DDP steps stay in lock-step
    flat = sum(train_parts, [])
    assert len(set(flat)) == len(flat) and len(flat) > n - world * 5


def test_wds_deals_whole_shards_when_there_are_enough(prepared):
    out, _ = prepared
    loader = make_loader(out / "pretrain", "train", "wds", rank=0, world_size=2)
    order, by_shard, counts = loader._plan()
    assert by_shard and sum(counts) == 48 and len(order) == 10
    few = make_loader(out / "task00", "test", "wds", rank=0, world_size=3)  # 2 shards for 3 ranks
    assert not few._plan()[1]
    parts = [collect(make_loader(out / "task00", "test", "wds", batch_size=3, with_index=True, rank=r,
                                 world_size=3))[2].tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(8)) and all(parts)


def test_rank_and_world_size_from_the_environment(prepared, monkeypatch):
    out, _ = prepared
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = make_loader(out / "pretrain", "test", "memory", with_index=True)
    assert (loader.rank, loader.world_size) == (1, 2)
    assert collect(loader)[2].tolist() == list(range(1, 16, 2))
    with pytest.raises(ValueError, match="rank 2"):
        make_loader(out / "pretrain", "test", "memory", rank=2, world_size=2)


def test_wds_worker_processes_give_the_same_samples(prepared):
    out, _ = prepared
    base = collect(make_loader(out / "pretrain", "train", "wds", batch_size=6, with_index=True))
    multi = make_loader(out / "pretrain", "train", "wds", batch_size=6, with_index=True, num_workers=2)
    x, y, idx = collect(multi)
    assert [len(b[1]) for b in multi] == [6] * 8
    order = torch.argsort(idx)
    assert torch.equal(idx[order], base[2]) and torch.equal(x[order], base[0]) and torch.equal(y[order], base[1])


def _gloo_worker(rank: int, world: int, init: str, out: str, result: str):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        got = {}
        for fmt in ("wds", "memory"):
            loader = make_loader(f"{out}/pretrain", "train", fmt, batch_size=5, with_index=True)
            got[fmt] = [int(i) for _, _, idx in loader for i in idx]
            loader = make_loader(f"{out}/pretrain", "train", fmt, batch_size=5, train=True, with_index=True)
            got[fmt + "_train"] = [int(i) for _, _, idx in loader for i in idx]
        with open(f"{result}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_group(prepared, tmp_path):
    out, _ = prepared
    torch.multiprocessing.spawn(_gloo_worker, args=(2, f"file://{tmp_path}/pg", str(out), str(tmp_path / "r")),
                                nprocs=2, join=True)
    got = [json.loads((tmp_path / f"r.{r}").read_text()) for r in range(2)]
    for fmt in ("wds", "memory"):
        assert sorted(got[0][fmt] + got[1][fmt]) == list(range(48))
        a, b = got[0][fmt + "_train"], got[1][fmt + "_train"]
        assert len(a) == len(b) and not set(a) & set(b)


def test_rank_share_is_a_distributed_sampler():
    parts = [rank_share(10, r, 3, shuffle=True, seed=1, epoch=4, equal=False) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    equal = [rank_share(10, r, 3, shuffle=True, seed=1, epoch=4, equal=True) for r in range(3)]
    assert [len(p) for p in equal] == [3, 3, 3]
    assert not np.array_equal(rank_share(10, 0, 1, True, 1, 4, False), rank_share(10, 0, 1, True, 1, 5, False))
