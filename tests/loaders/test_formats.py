"""Loaders: the three formats give the same samples, in batches, shuffled and augmented as asked."""

from __future__ import annotations

import pytest
import torch

from data_prep.manifest import read_unit
from data_prep.prepare import prepare
from loaders import make_loader, read_all
from tests.data_prep.test_writers import tiny_source
from tests.loaders.fixtures import FFCV_TEARDOWN, FORMATS, collect, expected

pytestmark = pytest.mark.filterwarnings(FFCV_TEARDOWN)


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
