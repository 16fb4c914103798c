"""`data.per_class` / `--per-class`: a seeded number of images per class in the named splits, the same images in
every unit, the other splits whole; a changed count rebuilds the units; bad keys are errors naming them."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.manifest import load_manifest
from data_prep.sources import open_source
from data_prep.subset import per_class, sample_per_class
from data_prep.tasks import load_tasks
from loaders import make_loader
from pipeline.cli import main as nws
from tests.data_prep.test_prepare import run
from tests.data_prep.test_writers import tiny_source


def _images(out, unit: str, split: str) -> set[bytes]:
    loader = make_loader(out / unit, split, "wds", batch_size=64, mean=[0.0] * 3, std=[1.0] * 3)
    return {x.numpy().tobytes() for xb, _ in loader for x in xb}


def test_sample_per_class_counts_seeds_and_nests():
    labels = np.repeat(np.arange(4), [30, 30, 5, 30])
    keep = sample_per_class(labels, 10, seed=0, split_name="train")
    assert np.bincount(labels[keep]).tolist() == [10, 10, 5, 10]  # a class with fewer keeps all of them
    assert np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, sample_per_class(labels, 10, seed=0, split_name="train"))
    other = sample_per_class(labels, 10, seed=1, split_name="train")
    assert not np.array_equal(keep, other)
    assert set(keep) < set(sample_per_class(labels, 20, seed=0, split_name="train"))  # more keeps the fewer


def test_per_class_prepares_the_same_images_in_every_unit(tmp_path):
    source = tiny_source(per_class=(12, 4), num_classes=4)
    summary = run(tmp_path, source, formats=("wds",), per_class={"train": 5})
    assert {u: s["splits"] for u, s in summary["units"].items()} == {
        "task00": {"train": 10, "test": 8}, "task01": {"train": 10, "test": 8}, "pretrain": {"train": 20, "test": 16}}
    pretrain = _images(tmp_path, "pretrain", "train")
    assert _images(tmp_path, "task00", "train") | _images(tmp_path, "task01", "train") == pretrain
    assert len(pretrain) == 20
    _, meta = load_tasks(tmp_path / "tasks.json")
    assert meta["per_class"] == {"counts": {"train": 5}, "seed": 0}
    hashes = {u: e["config_hash"] for u, e in load_manifest(tmp_path)["units"].items()}
    summary = run(tmp_path, source, formats=("wds",), per_class={"train": 6})
    assert summary["built"] == ["task00", "task01", "pretrain"]
    assert summary["units"]["task00"]["splits"] == {"train": 12, "test": 8}
    assert all(hashes[u] != e["config_hash"] for u, e in load_manifest(tmp_path)["units"].items())
    summary = run(tmp_path, source, formats=("wds",))  # without it: the whole source again, not the sample's hash
    assert summary["built"] == ["task00", "task01", "pretrain"] and summary["units"]["task00"]["splits"]["train"] == 24


def test_per_class_errors_name_the_key(tmp_path, capsys):
    source = tiny_source(per_class=(12, 4), num_classes=4)
    with pytest.raises(ValueError, match=r"data.per_class.valid: .* no split 'valid'"):
        per_class(source, {"valid": 5})
    with pytest.raises(ValueError, match=r"data.per_class.train: expected a positive number"):
        per_class(source, {"train": 0})
    assert nws(["data", "prepare", "digits", "--out", str(tmp_path), "--per-class", "train150"]) == 2
    assert "--per-class 'train150': expected SPLIT=N" in capsys.readouterr().err


def test_cli_per_class_on_digits(tmp_path, capsys):
    assert nws(["data", "prepare", "digits", "--out", str(tmp_path), "--quiet", "--format", "wds",
                 "--per-class", "train=15"]) == 0
    source = open_source("digits")
    units = load_manifest(tmp_path)["units"]
    assert units["pretrain"]["splits"]["train"]["num_samples"] == 150
    assert units["task02"]["splits"]["train"]["num_samples"] == 30
    assert units["pretrain"]["splits"]["test"]["num_samples"] == len(source.splits["test"])


def test_damaged_shards_are_named_by_the_loaders_and_by_nws_data_verify(tmp_path, capsys):
    """Issue 17: shards were read without checking the manifest. Every loader checks sizes, the memory loader
    (which reads the whole split) re-hashes it, and `nws data verify` re-hashes every unit (exit 4)."""
    import pytest as _pytest

    from pipeline.cli import main as nws

    assert nws(["data", "prepare", "digits", "--out", str(tmp_path), "--quiet", "--format", "wds"]) == 0
    assert nws(["data", "verify", str(tmp_path)]) == 0
    assert "6 unit(s), 12 file(s) re-hashed, 0 problem(s)" in capsys.readouterr().out
    shard = tmp_path / "task01" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a re-hash sees it
    shard.write_bytes(bytes(data))
    with _pytest.raises(ValueError, match=rf"{shard}: sha256 differs from the manifest: the data is damaged"):
        make_loader(tmp_path / "task01", "train", "memory", batch_size=32)
    assert nws(["data", "verify", str(tmp_path)]) == 4
    captured = capsys.readouterr()
    assert f"error: {shard}: sha256 differs from the manifest" in captured.err
    assert "task01: 1 problem(s)" in captured.out and "task00: ok" in captured.out
    shard.write_bytes(bytes(data[:-100]))
    with _pytest.raises(ValueError, match=rf"{shard}: {len(data) - 100} bytes, the manifest says {len(data)}"):
        make_loader(tmp_path / "task01", "train", "wds", batch_size=32)
    shard.unlink()
    with _pytest.raises(FileNotFoundError, match=rf"{shard}: missing"):
        make_loader(tmp_path / "task01", "train", "wds", batch_size=32)
