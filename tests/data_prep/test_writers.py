"""Writers: webdataset shards, FFCV .beton files, the manifest's statistics and the stored-size rules."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from data_prep.manifest import PixelStats, config_hash, verify_files
from data_prep.prepare import WriteOptions, fit_image
from data_prep.types import BadImage, Sample, Source, Split
from data_prep.write_ffcv import page_size_for, write_beton
from data_prep.write_wds import ShardWriter, check_key, decode_image, encode_image, image_ext

pytestmark = pytest.mark.filterwarnings(  # numba's known harmless finalizer KeyError at FFCV teardown
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")


def image_of(i: int, h: int = 8, w: int = 8) -> np.ndarray:
    """A deterministic, record-specific image (every pixel depends on i, so mix-ups are caught)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


class TinyLoad:
    """Split.load of a hand-made source: record i is image_of(offset + i); `bad` records raise BadImage and
    `fail` records raise RuntimeError (an unexpected reader failure)."""

    def __init__(self, labels, offset=0, size=(8, 8), bad=(), fail=(), sizes=None):
        self.labels, self.offset, self.size = labels, offset, size
        self.bad, self.fail, self.sizes = set(bad), set(fail), sizes

    def image(self, i: int) -> np.ndarray:
        h, w = self.sizes[i] if self.sizes is not None else self.size
        return image_of(self.offset + i, h, w)

    def __call__(self, i: int) -> Sample:
        if i in self.bad:
            raise BadImage(f"/data/rec{self.offset + i:05d}.png", "cannot decode image (truncated)")
        if i in self.fail:
            raise RuntimeError(f"reader broke on record {i}")
        return Sample(key=f"c{self.labels[i]}/rec{self.offset + i:05d}", image=self.image(i),
                      label=int(self.labels[i]))


def tiny_source(per_class=(12, 4), num_classes=4, size=(8, 8), bad=None, fail=None, sizes=None) -> Source:
    """A Source built from data_prep/types.py only: `num_classes` classes, per_class = (train, test) records
    per class, labels interleaved like a real dataset's."""
    splits = {}
    for s, (name, n) in enumerate(zip(("train", "test"), per_class, strict=True)):
        labels = np.tile(np.arange(num_classes), n).astype(np.int64)
        load = TinyLoad(labels, offset=10_000 * s, size=size, bad=(bad or {}).get(name, ()),
                        fail=(fail or {}).get(name, ()), sizes=None if sizes is None else sizes.get(name))
        splits[name] = Split(labels=labels, load=load)
    return Source(name="tiny", classes=[f"class{c}" for c in range(num_classes)], splits=splits)


def read_shards(paths):
    return [(s["__key__"], decode_image(s.get("png", s.get("jpg"))), int(s["cls"]))
            for s in wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)]


def test_shards_split_at_max_count_and_read_back_exactly(tmp_path):
    images = [image_of(i) for i in range(7)]
    writer = ShardWriter(tmp_path, "train", max_per_shard=3)
    for i, im in enumerate(images):
        writer.write(f"k/{i:03d}", "png", encode_image(im, "png"), label=i % 2)
    records = writer.close()
    assert [r["path"] for r in records] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [r["num_samples"] for r in records] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [r["path"] for r in records]  # no temp left
    assert verify_files(tmp_path, records) == []
    got = read_shards([tmp_path / r["path"] for r in records])
    assert [g[0] for g in got] == [f"k/{i:03d}" for i in range(7)]
    assert [g[2] for g in got] == [i % 2 for i in range(7)]
    for (_, im, _), want in zip(got, images, strict=True):
        np.testing.assert_array_equal(im, want)


def test_shards_are_byte_identical_across_runs(tmp_path):
    digests = []
    for run in range(2):
        writer = ShardWriter(tmp_path / str(run), "test", max_per_shard=10)
        (tmp_path / str(run)).mkdir()
        for i in range(4):
            writer.write(f"{i}", "png", encode_image(image_of(i), "png"), label=1)
        digests.append([r["sha256"] for r in writer.close()])
    assert digests[0] == digests[1]


def test_abort_removes_the_shard_in_progress_only(tmp_path):
    writer = ShardWriter(tmp_path, "train", max_per_shard=2)
    for i in range(3):
        writer.write(f"{i}", "png", encode_image(image_of(i), "png"), label=0)
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]


def test_keys_that_webdataset_would_split_are_refused():
    assert check_key("n01440764/n01440764_10026") == "n01440764/n01440764_10026"
    for key in ("a/b.c", "x.png", "", "/abs"):
        with pytest.raises(ValueError, match="webdataset key"):
            check_key(key)


def test_auto_encoding_is_lossless_up_to_64x64_pixels():
    assert image_ext(image_of(0, 64, 64), "auto") == "png"
    assert image_ext(image_of(0, 65, 64), "auto") == "jpg"
    assert image_ext(image_of(0, 500, 8), "auto") == "png"  # area rule, the same as FFCV's smart threshold
    big = image_of(0, 80, 80)
    assert np.array_equal(decode_image(encode_image(big, "png")), big)
    assert not np.array_equal(decode_image(encode_image(big, "jpg")), big)


class Records:
    def __init__(self, images, fail_at=None):
        self.images, self.fail_at = images, fail_at

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise BadImage(f"/data/{i}.jpg", "truncated")
        return self.images[i], i % 3, i


def test_beton_raw_round_trip(tmp_path):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    images = [image_of(i, 32, 32) for i in range(50)]
    rec = write_beton(tmp_path / "train.beton", Records(images), write_mode="auto", max_image_bytes=32 * 32 * 3,
                      progress=False)
    assert rec["num_samples"] == 50 and rec["path"] == "train.beton"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.beton"]
    assert verify_files(tmp_path, [rec]) == []
    loader = Loader(str(tmp_path / "train.beton"), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                                                "label": [IntDecoder(), ToTensor()],
                                                "index": [IntDecoder(), ToTensor()]})
    seen = 0
    for x, y, idx in loader:
        for k in range(len(x)):
            i = int(idx[k, 0])
            np.testing.assert_array_equal(x[k].numpy(), images[i])
            assert int(y[k, 0]) == i % 3
            seen += 1
    assert seen == 50


def test_beton_failure_is_raised_and_leaves_no_file(tmp_path):
    images = [image_of(i) for i in range(20)]
    with pytest.raises(RuntimeError, match=r"/data/7\.jpg"):
        write_beton(tmp_path / "test.beton", Records(images, fail_at=7), max_image_bytes=192, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_page_size_fits_the_largest_image():
    assert page_size_for(192) == 1 << 21
    size = page_size_for(3000 * 2000 * 3)
    assert size >= 4 * 3000 * 2000 * 3 and size & (size - 1) == 0


def test_pixel_stats_match_numpy_and_merge():
    images = [image_of(i, 5, 7) for i in range(6)]
    a, b, whole = PixelStats(), PixelStats(), PixelStats()
    for i, im in enumerate(images):
        (a if i < 2 else b).add(im)
        whole.add(im)
    a.merge(b)
    mean, std = a.mean_std()
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)
    np.testing.assert_allclose(PixelStats.from_dict(a.to_dict()).mean_std(), whole.mean_std(), rtol=1e-12)


def test_fit_image_square_and_max_resolution():
    im = image_of(0, 60, 90)
    square = fit_image(im, WriteOptions(image_size=32))
    assert square.shape == (32, 32, 3) and square.dtype == np.uint8
    capped = fit_image(im, WriteOptions(max_resolution=45))
    assert capped.shape == (30, 45, 3)
    assert fit_image(im, WriteOptions()) is not None and np.array_equal(fit_image(im, WriteOptions()), im)
    assert np.array_equal(fit_image(image_of(1, 32, 32), WriteOptions(image_size=32)), image_of(1, 32, 32))
    with pytest.raises(ValueError, match="not both"):
        WriteOptions(image_size=32, max_resolution=40)


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
