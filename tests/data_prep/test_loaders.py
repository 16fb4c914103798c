"""Loaders: the three formats give the same samples, ranks read disjoint parts, augmentation is what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep.augment import BatchTransform, random_crop_pad, random_flip, resize_center_crop, rrc_boxes
from data_prep.loaders import make_loader, rank_share, read_all
from data_prep.manifest import read_unit
from data_prep.prepare import prepare, write_order
from data_prep.tasks import Task
from tests.data_prep.test_writers import tiny_source

FORMATS = ("wds", "ffcv", "memory")

pytestmark = pytest.mark.filterwarnings(  # numba's known harmless finalizer KeyError at FFCV teardown
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """4 classes -> tasks task00 (classes 0, 1) and task01 (2, 3) plus pretrain; 24/8 and 48/16 samples per
    split; 5 samples per shard so splits span several shards."""
    out = tmp_path_factory.mktemp("units")
    source = tiny_source(per_class=(12, 4), num_classes=4, size=(8, 8))
    prepare("tiny", None, out, ("wds", "ffcv"), "blocks", {"classes_per_task": 2}, source=source,
            max_per_shard=5, progress=False)
    return out, source


def collect(loader):
    xs, ys, idx = [], [], []
    for x, y, i in loader:
        xs.append(x)
        ys.append(y)
        idx.append(i)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


def expected(out, source, unit: str, split: str):
    """What a loader must give without augmentation, computed from the source: the records in write order,
    task labels, and (x/255 - mean)/std with the manifest's statistics."""
    entry = read_unit(out / unit)
    task = Task(unit, entry["classes"]["names"], entry["classes"]["ids"])
    order = write_order(source.splits[split], task, unit, split, 0)
    images = np.stack([source.splits[split].load(int(i)).image for i in order]).astype(np.float64) / 255
    x = (images - np.array(entry["mean"])) / np.array(entry["std"])
    y = np.array([task.remap(source.splits[split].labels[i]) for i in order])
    return torch.from_numpy(x).permute(0, 3, 1, 2).float(), torch.from_numpy(y)


@pytest.mark.parametrize("unit,split", [("task01", "train"), ("pretrain", "test")])
def test_every_format_gives_the_source_pixels_and_labels(prepared, unit, split):
    out, source = prepared
    want_x, want_y = expected(out, source, unit, split)
    results = {}
    for fmt in FORMATS:
        loader = make_loader(out / unit, split, fmt, batch_size=7, train=False, with_index=True)
        x, y, idx = collect(loader)
        assert loader.num_samples == len(want_y) == len(y)
        assert len(loader) == -(-len(want_y) // 7)
        assert torch.equal(idx, torch.arange(len(want_y)))  # sequential: write order
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
        assert torch.equal(y, want_y)
        results[fmt] = x
    assert torch.equal(results["wds"], results["ffcv"]) and torch.equal(results["wds"], results["memory"])


def test_batches_and_drop_last(prepared):
    out, _ = prepared
    for fmt in FORMATS:
        loader = make_loader(out / "task00", "train", fmt, batch_size=10, drop_last=True)
        sizes = [len(y) for _, y in loader]
        assert sizes == [10, 10] and len(loader) == 2
        sizes = [len(y) for _, y in make_loader(out / "task00", "train", fmt, batch_size=10)]
        assert sizes == [10, 10, 4]


def test_training_order_is_shuffled_per_epoch_and_reproducible(prepared):
    out, _ = prepared
    for fmt in FORMATS:
        loader = make_loader(out / "pretrain", "train", fmt, batch_size=16, train=True, seed=3, with_index=True)
        x0, _, i0 = collect(loader)
        x0b, _, i0b = collect(loader)
        loader.set_epoch(1)
        _, _, i1 = collect(loader)
        assert sorted(i0.tolist()) == sorted(i1.tolist()) == list(range(48)), fmt
        assert not torch.equal(i0, torch.arange(48)) and not torch.equal(i0, i1), fmt
        assert torch.equal(i0, i0b) and torch.equal(x0, x0b), fmt


def test_training_augmentation_changes_pixels_but_not_labels(prepared):
    out, source = prepared
    _, want_y = expected(out, source, "task00", "train")
    for fmt in FORMATS:
        x, y, idx = collect(make_loader(out / "task00", "train", fmt, batch_size=8, train=True, with_index=True))
        plain, _, pidx = collect(make_loader(out / "task00", "train", fmt, batch_size=8, with_index=True))
        assert x.shape == plain.shape == (24, 3, 8, 8)
        assert torch.equal(y, want_y[idx])
        assert not torch.equal(x, plain[idx]), fmt


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


def test_unknown_split_and_format_are_clear_errors(prepared):
    out, _ = prepared
    with pytest.raises(KeyError, match="no split 'val'"):
        make_loader(out / "task00", "val", "wds")
    with pytest.raises(ValueError, match="unknown loader format"):
        make_loader(out / "task00", "train", "lmdb")
    with pytest.raises(KeyError, match="no complete unit 'task07'"):
        make_loader(out / "task07", "train", "wds")


def test_variable_size_images_are_cropped_per_sample(tmp_path):
    sizes = {"train": [(20 + i % 5, 30 - i % 7) for i in range(24)], "test": [(18, 25 + i % 3) for i in range(8)]}
    source = tiny_source(per_class=(12, 4), num_classes=2, sizes=sizes)
    prepare("tiny", None, tmp_path, ("wds", "ffcv"), "all", {}, source=source, progress=False)
    entry = read_unit(tmp_path / "pretrain")
    assert entry["image_size"] is None and entry["max_image_size"] == [24, 30]
    for fmt in ("wds", "ffcv"):
        for train in (False, True):
            x, y = next(iter(make_loader(tmp_path / "pretrain", "train", fmt, batch_size=24, train=train,
                                         image_size=16)))
            assert x.shape == (24, 3, 16, 16) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="varying size"):
        read_all(tmp_path / "pretrain", "train")


def test_large_images_stored_losslessly_match_across_formats(tmp_path):
    source = tiny_source(per_class=(6, 2), num_classes=2, size=(80, 96))
    prepare("tiny", None, tmp_path, ("wds", "ffcv"), "all", {}, source=source, image_format="png",
            ffcv_write_mode="raw", progress=False)
    got = {}
    for fmt in FORMATS:
        x, _, idx = collect(make_loader(tmp_path / "pretrain", "train", fmt, batch_size=5, image_size=64,
                                        with_index=True))
        assert x.shape == (12, 3, 64, 64) and torch.equal(idx, torch.arange(12))
        got[fmt] = x
        x_train, _ = next(iter(make_loader(tmp_path / "pretrain", "train", fmt, batch_size=12, train=True,
                                           image_size=64)))
        assert x_train.shape == (12, 3, 64, 64)
    assert torch.equal(got["wds"], got["ffcv"]) and torch.equal(got["wds"], got["memory"])


def test_rank_share_is_a_distributed_sampler():
    parts = [rank_share(10, r, 3, shuffle=True, seed=1, epoch=4, equal=False) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    equal = [rank_share(10, r, 3, shuffle=True, seed=1, epoch=4, equal=True) for r in range(3)]
    assert [len(p) for p in equal] == [3, 3, 3]
    assert not np.array_equal(rank_share(10, 0, 1, True, 1, 4, False), rank_share(10, 0, 1, True, 1, 5, False))


def test_random_crop_pad_is_a_shifted_window_and_flip_mirrors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    crops = random_crop_pad(x, 4, gen)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for k in range(16):
        assert any(torch.equal(crops[k], padded[k, :, dy:dy + 8, dx:dx + 8]) for dy in range(9) for dx in range(9))
    flipped = random_flip(x, gen)
    same = [torch.equal(flipped[k], x[k]) for k in range(16)]
    mirrored = [torch.equal(flipped[k], x[k].flip(-1)) for k in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored) and not all(mirrored)


def test_rrc_boxes_follow_scale_and_ratio():
    gen = torch.Generator().manual_seed(0)
    boxes = rrc_boxes(100, 120, 500, gen)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 120).all()
    area = h * w / (100 * 120)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.std() > 0.1
    assert ((w / h) > 0.7).all() and ((w / h) < 1.4).all()


def test_eval_transform_resizes_then_center_crops():
    x = torch.arange(2 * 3 * 256 * 256, dtype=torch.float32).reshape(2, 3, 256, 256)
    out = resize_center_crop(x, 224)
    assert out.shape == (2, 3, 224, 224) and torch.equal(out, x[..., 16:240, 16:240])
    t = BatchTransform("large", 224, [0.5] * 3, [0.25] * 3, augment=False)
    y = t(torch.full((1, 3, 300, 400), 255, dtype=torch.uint8), torch.Generator())
    assert y.shape == (1, 3, 224, 224) and torch.allclose(y, torch.full_like(y, 2.0))


def test_ffcv_leaves_torch_threads_alone(prepared):
    """FFCV sets torch's intra-op threads to its num_workers when an epoch starts; the loader puts it back."""
    out, _ = prepared
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        loader = make_loader(out / "pretrain", "train", "ffcv", batch_size=4, num_workers=2)
        seen = []
        for _batch in loader:
            seen.append(torch.get_num_threads())
        assert len(seen) == 12 and set(seen) == {3} and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
