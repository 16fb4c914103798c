"""`prepare` and `nws data prepare`: layout and manifest, resume and verification, bad input, and end-to-end runs
on the real digits and Fashion-MNIST and on every fixture format, read back through the loaders."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import load_manifest, read_unit, verify_unit
from data_prep.prepare import PrepareError, prepare, write_order
from data_prep.sources import open_source
from data_prep.tasks import load_tasks, task_records
from loaders import make_loader
from nws.io import read_json, sha256_file
from pipeline.cli import main as nws
from tests.data_prep import fixtures
from tests.data_prep.test_writers import tiny_source

pytestmark = pytest.mark.filterwarnings(  # numba's known harmless finalizer KeyError at FFCV teardown
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def run(out, source, **kw):
    kw.setdefault("progress", False)
    return prepare("tiny", None, out, kw.pop("formats", ("wds", "ffcv")), kw.pop("kind", "blocks"),
                   kw.pop("task_opts", {"classes_per_task": 2}), source=source, **kw)


def files_of(out: Path) -> dict[str, tuple[int, float]]:
    """Every file under `out` -> (inode, mtime): shows what a run rewrote."""
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_layout_and_manifest(tmp_path):
    source = tiny_source(per_class=(12, 4), num_classes=4)
    summary = run(tmp_path, source, max_per_shard=10)
    assert summary["built"] == ["task00", "task01", "pretrain"] and summary["skipped"] == []
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bad_images.log", "manifest.json", "pretrain", "task00", "task01", "tasks.json"]
    assert sorted(p.name for p in (tmp_path / "task01").iterdir()) == [
        "test-000000.tar", "test.beton", "train-000000.tar", "train-000001.tar", "train-000002.tar", "train.beton"]
    tasks, meta = load_tasks(tmp_path / "tasks.json")
    assert [t.name for t in tasks] == ["task00", "task01"] and tasks[1].class_ids == [2, 3]
    assert meta["task_kind"] == "blocks" and meta["task_options"] == {"classes_per_task": 2}
    manifest = load_manifest(tmp_path)
    assert manifest["summary"] == summary
    entry = manifest["units"]["task01"]
    assert entry["classes"] == {"names": ["class2", "class3"], "ids": [2, 3]}
    assert entry["image_size"] == [8, 8] and entry["bad_images"] == 0 and len(entry["config_hash"]) == 64
    train = entry["splits"]["train"]
    assert train["num_samples"] == 24 and train["wds"]["samples_per_shard"] == [10, 10, 4]
    assert train["ffcv"]["num_samples"] == 24
    for rec in [*train["wds"]["shards"], train["ffcv"]]:
        path = tmp_path / "task01" / rec["path"]
        assert sha256_file(path) == rec["sha256"] and path.stat().st_size == rec["bytes"]
    pixels = np.stack([source.splits["train"].load(int(i)).image
                       for i in task_records(source.splits["train"], tasks[1])]).reshape(-1, 3) / 255
    np.testing.assert_allclose(entry["mean"], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(entry["std"], pixels.std(0), rtol=1e-9)
    assert manifest["units"]["pretrain"]["classes"]["ids"] == [0, 1, 2, 3]
    assert manifest["units"]["pretrain"]["splits"]["test"]["num_samples"] == 16
    assert (tmp_path / "bad_images.log").read_text() == ""


def test_rerun_skips_verified_units_and_rebuilds_damaged_or_changed_ones(tmp_path):
    source = tiny_source()
    run(tmp_path, source, formats=("wds",), max_per_shard=10)
    before = files_of(tmp_path)
    summary = run(tmp_path, source, formats=("wds",), max_per_shard=10)
    assert summary["built"] == [] and summary["skipped"] == ["task00", "task01", "pretrain"]
    after = files_of(tmp_path)
    assert {k: v for k, v in after.items() if k.count("/")} == {k: v for k, v in before.items() if k.count("/")}
    shard = tmp_path / "task00" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_unit(tmp_path / "task00", read_unit(tmp_path / "task00"))
    summary = run(tmp_path, source, formats=("wds",), max_per_shard=10)
    assert summary["built"] == ["task00"]
    assert verify_unit(tmp_path / "task00", read_unit(tmp_path / "task00")) == []
    summary = run(tmp_path, source, formats=("wds",), max_per_shard=7)
    assert summary["built"] == ["task00", "task01", "pretrain"]
    assert read_unit(tmp_path / "task00")["splits"]["train"]["wds"]["samples_per_shard"] == [7, 7, 7, 3]
    assert sorted(p.name for p in (tmp_path / "task00").glob("train-*")) == [f"train-00000{i}.tar" for i in range(4)]
    assert run(tmp_path, source, formats=("wds",), max_per_shard=7, force=True)["built"] == [
        "task00", "task01", "pretrain"]


def test_interrupted_run_resumes_at_the_next_split_and_leaves_no_partial_file(tmp_path):
    broken = tiny_source(fail={"test": [6]})  # record 6 has class 2: task01's test split breaks
    with pytest.raises(RuntimeError, match="record 6"):
        run(tmp_path, broken, max_per_shard=10)
    manifest = load_manifest(tmp_path)
    assert list(manifest["units"]) == ["task00"] and verify_unit(tmp_path / "task00", manifest["units"]["task00"]) == []
    assert not (tmp_path / "task01").exists()
    partial = tmp_path / ".task01.partial"
    assert sorted(p.name for p in partial.iterdir()) == [
        "progress.json", "train-000000.tar", "train-000001.tar", "train-000002.tar", "train.beton"]
    assert list(read_json(partial / "progress.json")["splits"]) == ["train"]
    kept = {p.name: p.stat().st_ino for p in partial.glob("train*")}
    summary = run(tmp_path, tiny_source(), max_per_shard=10)
    assert summary["built"] == ["task01", "pretrain"] and summary["skipped"] == ["task00"]
    assert {p.name: p.stat().st_ino for p in (tmp_path / "task01").glob("train*")} == kept  # not rewritten
    assert not partial.exists() and not list(tmp_path.glob(".*"))
    assert verify_unit(tmp_path / "task01", read_unit(tmp_path / "task01")) == []


def test_a_failing_forced_rebuild_damages_nothing(tmp_path):
    run(tmp_path, tiny_source(), formats=("wds",))
    old = read_unit(tmp_path / "task01")
    with pytest.raises(RuntimeError):
        run(tmp_path, tiny_source(fail={"train": [10]}), formats=("wds",), force=True)
    assert read_unit(tmp_path / "task01") == old
    assert verify_unit(tmp_path / "task01", old) == []
    assert len([b for b in make_loader(tmp_path / "task01", "train", "wds", batch_size=100)][0][1]) == 24
    tasks_file = (tmp_path / "tasks.json").read_bytes()
    with pytest.raises(RuntimeError):  # the same split again: tasks.json stays
        run(tmp_path, tiny_source(fail={"train": [10]}), formats=("wds",), force=True)
    assert (tmp_path / "tasks.json").read_bytes() == tasks_file
    with pytest.raises(RuntimeError):  # another split: its task00 replaces the old one, so the old list goes
        run(tmp_path, tiny_source(fail={"train": [10]}), formats=("wds",), task_opts={"classes_per_task": 1})
    assert not (tmp_path / "tasks.json").exists()
    assert read_unit(tmp_path / "task00")["classes"]["ids"] == [0]
    run(tmp_path, tiny_source(), formats=("wds",), task_opts={"classes_per_task": 1})
    assert [t.class_ids for t in load_tasks(tmp_path / "tasks.json")[0]] == [[0], [1], [2], [3]]


def test_bad_images_are_skipped_and_listed_or_stop_the_run(tmp_path):
    source = tiny_source(bad={"train": [3, 7]})  # both of class 3: task01 and pretrain
    summary = run(tmp_path / "a", source, formats=("wds",))
    assert summary["bad_images"] == 4
    train = read_unit(tmp_path / "a" / "task01")["splits"]["train"]
    assert train["num_samples"] == 22
    assert train["bad_images"]["count"] == 2
    assert sorted(train["bad_images"]["names"]) == ["/data/rec00003.png", "/data/rec00007.png"]
    assert read_unit(tmp_path / "a" / "task00")["splits"]["train"]["bad_images"]["count"] == 0
    log = (tmp_path / "a" / "bad_images.log").read_text().splitlines()
    assert len(log) == 4 and all("truncated" in line for line in log)
    assert sorted(line.split("\t")[0] for line in log) == ["pretrain", "pretrain", "task01", "task01"]
    with pytest.raises(PrepareError, match=r"/data/rec0000[37]\.png"):
        run(tmp_path / "a", source, formats=("wds",), strict=True)  # complete units with bad images
    with pytest.raises(PrepareError, match=r"/data/rec0000[37]\.png.*--strict"):
        run(tmp_path / "b", source, formats=("wds",), strict=True)
    assert list(load_manifest(tmp_path / "b")["units"]) == ["task00"]


def test_a_task_without_images_in_a_split_is_an_error(tmp_path):
    source = tiny_source()
    source.splits["test"].labels[:] = 0
    with pytest.raises(PrepareError, match="unit 'task01': split 'test' has no readable images"):
        run(tmp_path, source, formats=("wds",))


def test_cli_prepares_digits_and_reports(tmp_path, capsys):
    assert nws(["data", "prepare", "digits", "--out", str(tmp_path), "--quiet", "--max-per-shard", "100"]) == 0
    printed = capsys.readouterr().out
    assert "6 unit(s) built" in printed and "pretrain" in printed
    source = open_source("digits")
    tasks, _ = load_tasks(tmp_path / "tasks.json")
    assert len(tasks) == 5 and all(t.num_classes == 2 for t in tasks)
    for unit, task in [("task03", tasks[3]), ("pretrain", None)]:
        for split in ("train", "test"):
            want = len(source.splits[split]) if task is None else len(task_records(source.splits[split], task))
            for fmt in ("wds", "ffcv"):
                loader = make_loader(tmp_path / unit, split, fmt, batch_size=64)
                labels = np.concatenate([y.numpy() for _, y in loader])
                assert len(labels) == want == loader.num_samples
                assert set(labels) == set(range(10 if task is None else 2))
    assert nws(["data", "prepare", "digits", "--out", str(tmp_path), "--quiet", "--max-per-shard", "100"]) == 0
    assert "0 unit(s) built, 6 verified and skipped" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert nws(["data", "prepare", "image_folder", "--root", str(tmp_path / "nowhere"),
                "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nowhere") in err and err.count("\n") == 1
    assert "Traceback" not in err
    root = fixtures.write_image_folder(tmp_path, corrupt=True)
    assert nws(["data", "prepare", "image_folder", "--root", str(root), "--out", str(tmp_path / "o"), "--strict",
                 "--quiet", "--format", "wds"]) == 2
    err = capsys.readouterr().err
    assert any(name in err for name in fixtures.CORRUPT_FILES) and err.count("\n") == 1
    assert nws(["data", "prepare", "digits", "--out", str(tmp_path / "o"), "--format", "tfrecord"]) == 2
    assert "--format" in capsys.readouterr().err


def test_nws_command_line_has_data_prepare(capsys):
    from pipeline.cli import main as nws_main

    with pytest.raises(SystemExit) as done:
        nws_main(["data", "prepare", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--root", "--out", "--format", "--tasks", "--max-per-shard", "--strict", "--force",
                   "--no-pretrain-set", "--image-size"):
        assert option in text


def check_units(out: Path, source_name: str, root, formats=("wds", "ffcv"), image_size=None, **options):
    """Every unit and split in the manifest holds the source's count for the unit's classes minus the bad images
    listed, with labels 0..v-1: read back through the webdataset loader, and from each .beton's header and
    label column; the FFCV loader reads the first unit and `pretrain` (each FFCV Loader compiles its pipeline)."""
    from ffcv.reader import Reader

    source = open_source(source_name, root, **options)
    manifest = load_manifest(out)
    for n, (unit, entry) in enumerate(manifest["units"].items()):
        ids = entry["classes"]["ids"]
        for split, s in entry["splits"].items():
            expected = int(np.isin(source.splits[split].labels, ids).sum()) - s["bad_images"]["count"]
            assert s["num_samples"] == expected, (unit, split)
            fmts = [f for f in formats if f != "ffcv" or n == 0 or unit == "pretrain"]
            if "ffcv" in formats:
                reader = Reader(str(out / unit / s["ffcv"]["path"]))
                labels = reader.metadata["f1"]
                assert reader.num_samples == expected and labels.min() >= 0 and labels.max() < len(ids)
            for fmt in fmts:
                loader = make_loader(out / unit, split, fmt, batch_size=50, image_size=image_size)
                labels = np.concatenate([y.numpy() for _, y in loader])
                assert len(labels) == expected and labels.min() >= 0 and labels.max() < len(ids), (unit, split)
    return manifest


def test_end_to_end_cifar100_tarball(tmp_path, capsys):
    root = fixtures.write_cifar100_tarball(tmp_path, per_class_train=2, per_class_test=1)
    out = tmp_path / "out"
    assert nws(["data", "prepare", "cifar100", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    tasks, _ = load_tasks(out / "tasks.json")
    assert len(tasks) == 20 and tasks[0].name == "aquatic_mammals" and tasks[-1].name == "vehicles_2"
    assert tasks[0].class_names == ["beaver", "dolphin", "otter", "seal", "whale"]
    manifest = check_units(out, "cifar100", root)
    assert manifest["units"]["aquatic_mammals"]["splits"]["train"]["num_samples"] == 10
    assert manifest["units"]["pretrain"]["image_size"] == [32, 32]
    # the stored pixels are the pickle's pixels (lossless png / raw), in both formats
    want = fixtures.read_cifar_fixture(root, "test")
    source = open_source("cifar100", root)
    order = write_order(source.splits["test"], tasks[0], tasks[0].name, "test", 0)
    for fmt in ("wds", "ffcv"):
        x, _, idx = next(iter(make_loader(out / "aquatic_mammals", "test", fmt, batch_size=5, mean=[0, 0, 0],
                                          std=[1, 1, 1], with_index=True)))
        for k in range(5):
            record = int(order[int(idx[k])])  # the record's position in the official test pickle
            np.testing.assert_allclose(x[k].permute(1, 2, 0).numpy() * 255, fixtures.cifar_image(want, record),
                                       atol=1e-3)


def test_end_to_end_imagenet_tree(tmp_path):
    root = fixtures.write_imagenet_tree(tmp_path)
    out = tmp_path / "out"
    assert nws(["data", "prepare", "imagenet", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    assert list(load_manifest(out)["units"]) == ["pretrain"]  # 3 classes: one all-classes unit
    manifest = check_units(out, "imagenet", root, image_size=16)
    assert manifest["units"]["pretrain"]["image_size"] is None  # JPEGs of varying size, stored as they are
    out2 = tmp_path / "out2"
    assert nws(["data", "prepare", "imagenet", "--root", str(root), "--out", str(out2), "--quiet", "--image-size", "12",
                 "--tasks", "explicit", "--explicit", "n01440764,n01484850;n01443537", "--no-pretrain-set",
                 "--image-format", "jpg", "--ffcv-write-mode", "jpg", "--jpeg-quality", "95"]) == 0
    manifest = check_units(out2, "imagenet", root)
    assert list(manifest["units"]) == ["task00", "task01"]
    assert manifest["units"]["task00"]["image_size"] == [12, 12]
    shard = out2 / "task00" / manifest["units"]["task00"]["splits"]["train"]["wds"]["shards"][0]["path"]
    assert {Path(n).suffix for n in tarfile.open(shard).getnames()} == {".cls", ".jpg"}


def test_end_to_end_image_folder_with_corrupt_files(tmp_path):
    root = fixtures.write_image_folder(tmp_path, corrupt=True)
    out = tmp_path / "out"
    assert nws(["data", "prepare", "image_folder", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    manifest = check_units(out, "image_folder", root, image_size=8)
    bad = manifest["units"]["pretrain"]["splits"]["train"]["bad_images"]
    assert bad["count"] == 3 and sorted(Path(n).name for n in bad["names"]) == sorted(fixtures.CORRUPT_FILES)
    assert len((out / "bad_images.log").read_text().splitlines()) == 3


def test_end_to_end_idx_fashion_mnist_and_miniimagenet(tmp_path):
    root = fixtures.write_idx_fashion_mnist(tmp_path, n_train=40, n_test=20)
    out = tmp_path / "fm"
    assert nws(["data", "prepare", "fashion_mnist", "--root", str(root), "--out", str(out), "--quiet"]) == 0
    manifest = check_units(out, "fashion_mnist", root)
    assert len(manifest["units"]) == 6 and manifest["units"]["task04"]["splits"]["train"]["num_samples"] == 8
    root = fixtures.write_miniimagenet(tmp_path)
    out = tmp_path / "mini"
    assert nws(["data", "prepare", "miniimagenet", "--root", str(root), "--out", str(out), "--quiet",
                 "--option", "test_fraction=0.25", "--image-size", "10"]) == 0
    check_units(out, "miniimagenet", root, test_fraction=0.25)


def test_end_to_end_cub2sketches(tmp_path):
    root = fixtures.write_cub2sketches(tmp_path)
    out = tmp_path / "out"
    assert nws(["data", "prepare", "cub2sketches", "--root", str(root), "--out", str(out), "--quiet", "--format", "wds",
                 "--image-size", "8"]) == 0
    tasks, _ = load_tasks(out / "tasks.json")
    assert [t.name for t in tasks] == list(fixtures.CUB2SKETCHES)
    check_units(out, "cub2sketches", root, formats=("wds", "memory"))


@pytest.mark.slow
def test_fashion_mnist_real_data_end_to_end(tmp_path, capsys):
    """The issue's acceptance run: real Fashion-MNIST -> 5 two-class tasks + the 10-class pretraining set, in
    both formats, read back with the right counts (60,000/10,000 and 12,000/2,000 per task)."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{FMNIST}: real Fashion-MNIST missing; install the Debian package dataset-fashion-mnist")
    out = tmp_path / "fmnist"
    workers = str(min(2, os.cpu_count() or 1))
    assert nws(["data", "prepare", "fashion_mnist", "--out", str(out), "--quiet", "--workers", workers]) == 0
    tasks, meta = load_tasks(out / "tasks.json")
    assert [t.class_ids for t in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert meta["root"] is None and meta["source"] == "fashion_mnist"
    manifest = load_manifest(out)
    for unit, (n_train, n_test) in [*[(t.name, (12_000, 2_000)) for t in tasks], ("pretrain", (60_000, 10_000))]:
        entry = manifest["units"][unit]
        assert entry["image_size"] == [28, 28]
        for split, n in (("train", n_train), ("test", n_test)):
            assert entry["splits"][split]["num_samples"] == n
            assert sum(entry["splits"][split]["wds"]["samples_per_shard"]) == n
    for fmt in ("wds", "ffcv"):
        for unit, split, n in [("pretrain", "train", 60_000), ("pretrain", "test", 10_000), ("task02", "train", 12_000),
                               ("task04", "test", 2_000)]:
            loader = make_loader(out / unit, split, fmt, batch_size=1000, train=split == "train")
            counts = np.bincount(np.concatenate([y.numpy() for _, y in loader]))
            assert counts.sum() == n == loader.num_samples and len(set(counts)) == 1, (fmt, unit, split)
    mean = manifest["units"]["pretrain"]["mean"]
    assert abs(mean[0] - 0.2860) < 1e-3 and mean[0] == mean[1] == mean[2]  # the known Fashion-MNIST mean
