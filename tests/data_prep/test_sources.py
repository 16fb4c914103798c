"""Readers on small fixtures written in the official formats, plus digits and the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_prep.sources import SOURCES, open_source, source_options
from data_prep.sources.common import file_keys, stratified_split
from data_prep.sources.fashion_mnist import CLASSES as FMNIST_CLASSES
from data_prep.sources.imagenet import read_synset_names
from data_prep.types import BadImage, LayoutError, Sample
from tests.data_prep import fixtures as fx

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


def load_all(split) -> list:
    return list(split.iter_records(np.arange(len(split))))


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_sources_and_rejects_unknown_names_and_options():
    assert set(SOURCES) == {"digits", "fashion_mnist", "cifar100", "imagenet", "image_folder", "cub2sketches",
                            "miniimagenet"}
    with pytest.raises(ValueError, match="known sources: digits, fashion_mnist"):
        open_source("mnist")
    with pytest.raises(ValueError, match=r"unknown options \['test_frac'\].*test_fraction"):
        open_source("digits", test_frac=0.1)
    assert source_options("image_folder") == ["test_fraction", "seed", "name"]


@pytest.mark.parametrize("name", ["cifar100", "imagenet", "image_folder", "cub2sketches", "miniimagenet"])
def test_sources_without_default_need_a_root(name):
    with pytest.raises(LayoutError, match=f"source '{name}' needs a root"):
        open_source(name)


# ---------------------------------------------------------------------------------------------- helpers
def test_file_keys_drop_extension_and_dots_but_stay_unique():
    keys = file_keys(["a/x.jpg", "a/x.png", "a/y.z.JPEG", "b/x.jpg"])
    assert keys == ["a/x_jpg", "a/x_png", "a/y_z", "b/x"]


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    train, test = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 1, 1, 0]
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], test)
    assert not all(np.array_equal(stratified_split(labels, 0.2, seed=s)[1], test) for s in range(4, 10))
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0, seed=0)


# ---------------------------------------------------------------------------------------------- digits
def test_digits_real_data_scaled_stratified_and_deterministic():
    from sklearn.datasets import load_digits

    data = load_digits()
    src = open_source("digits")
    train, test = src.splits["train"], src.splits["test"]
    assert src.classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797
    counts = np.bincount(data.target, minlength=10)
    assert np.bincount(test.labels, minlength=10).tolist() == [round(c * 0.2) for c in counts]
    keys = [s.key for s in load_all(train)] + [s.key for s in load_all(test)]
    assert sorted(keys) == [f"{i:04d}" for i in range(1797)]
    sample = test.load(5)
    i = int(sample.key)
    expected = np.rint(data.images[i] * 255 / 16).astype(np.uint8)
    assert sample.image.shape == (8, 8, 3) and sample.image.dtype == np.uint8
    assert all(np.array_equal(sample.image[..., ch], expected) for ch in range(3))
    assert sample.label == data.target[i]
    assert int(sample.image.max()) <= 255 and (data.images.max() == 16)
    assert [s.key for s in load_all(open_source("digits").splits["test"])] == [s.key for s in load_all(test)]
    other = open_source("digits", seed=1, test_fraction=0.5).splits["test"]
    assert len(other) == sum(round(c * 0.5) for c in counts)


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_fixture_reads_idx_pixels_and_labels(tmp_path):
    root = fx.write_idx_fashion_mnist(tmp_path, n_train=30, n_test=20)
    src = open_source("fashion_mnist", root=root)
    assert src.classes == FMNIST_CLASSES and len(src.classes) == 10
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 30, "test": 20}
    images, labels = fx.fashion_mnist_arrays(20, seed=1)
    assert np.array_equal(src.splits["test"].labels, labels)
    sample = src.splits["test"].load(7)
    assert sample.image.shape == (28, 28, 3) and sample.label == 7
    assert np.array_equal(sample.image, np.repeat(images[7][..., None], 3, axis=-1))


def test_fashion_mnist_reads_unpacked_files_too(tmp_path):
    root = fx.write_idx_fashion_mnist(tmp_path, n_train=10, n_test=10)
    for f in root.iterdir():
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    assert len(open_source("fashion_mnist", root=root).splits["train"]) == 10


@pytest.mark.parametrize("damage, message", [
    ("magic", r"train-labels-idx1-ubyte.gz: IDX magic 2051, expected 2049"),
    ("size", r"train-images-idx3-ubyte.gz: dims \(30, 28, 28\) need 23520 data bytes, found 23519"),
    ("count", r"train-images-idx3-ubyte.gz has 30 images but train-labels-idx1-ubyte.gz has 29 labels"),
    ("missing", r"t10k-images-idx3-ubyte.gz: file not found"),
    ("not_gzip", r"t10k-labels-idx1-ubyte.gz: cannot read"),
])
def test_fashion_mnist_bad_idx_is_a_layout_error_naming_the_file(tmp_path, damage, message):
    root = fx.write_idx_fashion_mnist(tmp_path, n_train=30, n_test=20)
    images, labels = fx.fashion_mnist_arrays(30, seed=0)
    if damage == "magic":
        fx.write_idx(root / "train-labels-idx1-ubyte.gz", labels, 2051)
    elif damage == "size":
        raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-1]))
    elif damage == "count":
        fx.write_idx(root / "train-labels-idx1-ubyte.gz", labels[:29], 2049)
    elif damage == "missing":
        (root / "t10k-images-idx3-ubyte.gz").unlink()
    else:
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(LayoutError, match=message):
        open_source("fashion_mnist", root=root)


def test_fashion_mnist_real_data_counts_histograms_and_pixels():
    src = open_source("fashion_mnist")  # the default root: the Debian package
    train, test = src.splits["train"], src.splits["test"]
    assert (len(train), len(test)) == (60_000, 10_000)
    assert np.bincount(train.labels).tolist() == [6_000] * 10
    assert np.bincount(test.labels).tolist() == [1_000] * 10
    assert train.labels[:3].tolist() == [9, 0, 0] and test.labels[:3].tolist() == [9, 2, 1]
    raw = gzip.decompress((FMNIST_ROOT / "t10k-images-idx3-ubyte.gz").read_bytes())
    for i in (0, 4_321, 9_999):
        sample = test.load(i)
        expected = np.frombuffer(raw, np.uint8, count=784, offset=16 + 784 * i).reshape(28, 28)
        assert sample.key == f"{i:06d}" and sample.label == test.labels[i]
        assert np.array_equal(sample.image, np.repeat(expected[..., None], 3, axis=-1))


# ---------------------------------------------------------------------------------------------- CIFAR-100
def test_shipped_superclass_mapping_matches_the_true_coarse_labels():
    mapping = json.loads((Path(__file__).parents[2] / "data_prep" / "cifar100_superclasses.json").read_text())
    assert list(mapping) == fx.CIFAR_COARSE
    for f, name in enumerate(fx.CIFAR_FINE):
        assert name in mapping[fx.CIFAR_COARSE[fx.CIFAR_FINE_TO_COARSE[f]]]
    assert sorted(n for names in mapping.values() for n in names) == fx.CIFAR_FINE


@pytest.mark.parametrize("form", ["tarball_dir", "tarball_file", "extracted_parent", "extracted_folder"])
def test_cifar100_reads_official_pickles_labels_pixels_and_groups(tmp_path, form):
    root = fx.write_cifar100_tarball(tmp_path, extracted=form.startswith("extracted"))
    ref = fx.write_cifar100_tarball(tmp_path / "ref")
    expected = {s: fx.read_cifar_fixture(ref, s) for s in ("train", "test")}
    path = {"tarball_file": root / "cifar-100-python.tar.gz", "extracted_folder": root / "cifar-100-python"}
    src = open_source("cifar100", root=path.get(form, root))
    assert src.classes == fx.CIFAR_FINE
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 200, "test": 100}
    assert src.groups == {f: fx.CIFAR_COARSE[fx.CIFAR_FINE_TO_COARSE[f]] for f in range(100)}
    for split in ("train", "test"):
        assert src.splits[split].labels.tolist() == expected[split][b"fine_labels"]
        for i in (0, 17, len(src.splits[split]) - 1):
            sample = src.splits[split].load(i)
            assert sample.image.shape == (32, 32, 3) and sample.label == expected[split][b"fine_labels"][i]
            assert np.array_equal(sample.image, fx.cifar_image(expected[split], i))
        keys = [s.key for s in load_all(src.splits[split])]
        assert len(set(keys)) == len(keys)


def test_cifar100_wrong_coarse_label_is_an_error_naming_the_class(tmp_path):
    root = fx.write_cifar100_tarball(tmp_path, wrong_coarse="elephant")
    with pytest.raises(LayoutError, match=r"train: fine class 'elephant' has coarse label 12 "
                                          r"\('medium_mammals'\) but cifar100_superclasses.json puts it in "
                                          r"'large_omnivores_and_herbivores'"):
        open_source("cifar100", root=root)


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cifar100_refuses_pickles_that_build_anything_but_data(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    good = fx.read_cifar_fixture(fx.write_cifar100_tarball(tmp_path), "test")
    members = {"train": pickle.dumps(Exploit(), protocol=2), "test": pickle.dumps(good, protocol=2),
               "meta": pickle.dumps({}, protocol=2)}
    tarball = _tar_with(tmp_path / "evil.tar.gz", members)
    with pytest.raises(LayoutError, match=r"evil.tar.gz:cifar-100-python/train: not a CIFAR-100 python "
                                          r"pickle \(refusing to load (posix|os).system\)"):
        open_source("cifar100", root=tarball)
    assert not (tmp_path / "pwned").exists()


def test_cifar100_missing_member_or_bad_fields_are_layout_errors(tmp_path):
    good = fx.read_cifar_fixture(fx.write_cifar100_tarball(tmp_path), "test")
    only_two = _tar_with(tmp_path / "a.tar.gz", {"train": pickle.dumps(good), "test": pickle.dumps(good)})
    with pytest.raises(LayoutError, match=r"members \['cifar-100-python/meta'\] not found"):
        open_source("cifar100", root=only_two)
    meta = pickle.dumps({b"fine_label_names": [n.encode() for n in fx.CIFAR_FINE],
                         b"coarse_label_names": [n.encode() for n in fx.CIFAR_COARSE]})
    no_coarse = {k: v for k, v in good.items() if k != b"coarse_labels"}
    broken = _tar_with(tmp_path / "b.tar.gz", {"train": pickle.dumps(no_coarse), "test": pickle.dumps(good),
                                                "meta": meta})
    with pytest.raises(LayoutError, match=r"b.tar.gz:train: key b'coarse_labels' missing"):
        open_source("cifar100", root=broken)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(LayoutError, match="junk.tar.gz: not a readable tarball"):
        open_source("cifar100", root=tmp_path / "junk.tar.gz")
    with pytest.raises(LayoutError, match=r"empty/cifar-100-python/train: file not found"):
        (tmp_path / "empty" / "cifar-100-python").mkdir(parents=True)
        open_source("cifar100", root=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- ImageNet
@pytest.mark.parametrize("val, labels", [("flat", "csv"), ("flat", "txt"), ("folders", None)])
def test_imagenet_train_folders_and_val_flat_or_folders(tmp_path, val, labels):
    root = fx.write_imagenet_tree(tmp_path, val=val, labels=labels)
    src = open_source("imagenet", root=root)
    assert src.classes == list(fx.IMAGENET_WNIDS)
    train, val_split = src.splits["train"], src.splits["val"]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    samples = load_all(val_split)
    assert all(isinstance(s, Sample) for s in samples)
    truth = {f"ILSVRC2012_val_{i + 1:08d}": fx.IMAGENET_WNIDS[::-1][i % 3] for i in range(6)}
    got = {s.key.rsplit("/", 1)[-1]: src.classes[s.label] for s in samples}
    assert got == truth
    assert samples[0].image.dtype == np.uint8 and samples[0].image.shape[2] == 3
    first = train.load(1)
    assert first.key == "n01440764/n01440764_2" and first.image.shape == (13, 16, 3)
    assert np.abs(first.image.astype(int) - fx.pattern(13, 16, 1)).mean() < 8  # JPEG is lossy, but close


@pytest.mark.parametrize("lines", ["wnid", "index"])
def test_imagenet_val_labels_txt_bare_wnids_or_class_indices(tmp_path, lines):
    root = fx.write_imagenet_tree(tmp_path, labels="txt")
    rows = [line.split() for line in (root / "val_labels.txt").read_text().splitlines()]
    if lines == "wnid":
        text = "".join(f"{w}\n" for _, w in sorted(rows))
    else:
        text = "".join(f"{n} {fx.IMAGENET_WNIDS.index(w)}\n" for n, w in rows)
    (root / "val_labels.txt").write_text(text)
    src = open_source("imagenet", root=root)
    assert [src.classes[c] for c in src.splits["val"].labels] == [w for _, w in sorted(rows)]


def test_imagenet_kaggle_root_and_synset_names(tmp_path):
    tree = fx.write_imagenet_tree(tmp_path)
    kaggle = tmp_path / "kaggle"
    (kaggle / "ILSVRC" / "Data").mkdir(parents=True)
    os.rename(tree / "train", tmp_path / "t")
    (kaggle / "ILSVRC" / "Data" / "CLS-LOC").mkdir()
    os.rename(tmp_path / "t", kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train")
    os.rename(tree / "val", kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    os.rename(tree / "LOC_val_solution.csv", kaggle / "LOC_val_solution.csv")
    src = open_source("imagenet", root=kaggle)
    assert (len(src.splits["train"]), len(src.splits["val"])) == (6, 6)
    assert read_synset_names(tree) == dict(zip(fx.IMAGENET_WNIDS, fx.IMAGENET_NAMES, strict=True))
    assert read_synset_names(kaggle) == {}


def test_imagenet_layout_errors_name_the_path(tmp_path):
    root = fx.write_imagenet_tree(tmp_path)
    (root / "LOC_val_solution.csv").rename(root / "elsewhere.csv")
    with pytest.raises(LayoutError, match=r"imagenet/val: flat val folder but no LOC_val_solution.csv or "
                                          r"val_labels.txt found"):
        open_source("imagenet", root=root)
    lines = (root / "elsewhere.csv").read_text().splitlines()
    (root / "LOC_val_solution.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LayoutError, match=r"LOC_val_solution.csv: no label for 1 images"):
        open_source("imagenet", root=root)
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    for f in (root / "train" / "n01443537").iterdir():
        f.unlink()
    with pytest.raises(LayoutError, match=r"train/n01443537: empty class folder"):
        open_source("imagenet", root=root)
    (root / "train").rename(root / "training")
    with pytest.raises(LayoutError, match=r"imagenet/train: folder not found; expected train/<wnid>/\*.JPEG"):
        open_source("imagenet", root=root)


# ---------------------------------------------------------------------------------------------- image folder
def test_image_folder_split_layout_lists_sorted_and_decodes_exact_pixels(tmp_path):
    root = fx.write_image_folder(tmp_path)
    src = open_source("image_folder", root=root)
    assert src.classes == ["cat", "dog", "fish"] and src.groups == {}
    train, test = src.splits["train"], src.splits["test"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    samples = load_all(train)
    assert [s.key for s in samples[:3]] == ["cat/img_000", "cat/img_001", "cat/img_002"]
    for s in samples:
        c, k = src.classes.index(s.key.split("/")[0]), int(s.key[-3:])
        assert np.array_equal(s.image, fx.pattern(8 + k, 9 + c, 10 * c + k))
    assert np.array_equal(test.load(5).image, fx.pattern(9, 11, 100 + 21))
    for cls in src.classes:
        fx._save(root / "val" / cls / "v.png", fx.pattern(5, 5, 0))
    with_val = open_source("image_folder", root=root, name="mine")
    assert with_val.name == "mine" and list(with_val.splits) == ["train", "val", "test"]
    assert with_val.splits["val"].labels.tolist() == [0, 1, 2]


def test_image_folder_corrupt_files_are_listed_then_raise_bad_image(tmp_path):
    root = fx.write_image_folder(tmp_path, corrupt=True)
    src = open_source("image_folder", root=root)  # listing never decodes, so opening works
    train = src.splits["train"]
    assert len(train) == 9 + len(fx.CORRUPT_FILES)
    records = load_all(train)
    bad = [r for r in records if isinstance(r, BadImage)]
    assert sorted(Path(b.path).name for b in bad) == sorted(fx.CORRUPT_FILES)
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.jpg"].lower() and "cannot identify" in reasons["garbage.png"]
    assert sum(isinstance(r, Sample) for r in records) == 9
    index = [i for i, r in enumerate(records) if isinstance(r, BadImage)][0]
    with pytest.raises(BadImage, match=str(root / "train" / "cat")):
        train.load(index)


def test_image_folder_extensions_case_insensitive_and_other_files_ignored(tmp_path):
    root = fx.write_image_folder(tmp_path, per_class=2)
    folder = root / "train" / "dog"
    for name, fmt in (("UPPER.JPG", "JPEG"), ("b.bmp", "BMP"), ("c.WebP", "WEBP"), ("d.jpeg", "JPEG")):
        fx._save(folder / name, fx.pattern(6, 7, 1), fmt)
    (folder / "e.gif").write_bytes(b"GIF89a")
    (folder / "sub").mkdir()
    src = open_source("image_folder", root=root)
    keys = [s.key for s in load_all(src.splits["train"]) if s.label == 1]
    assert keys == ["dog/UPPER", "dog/b", "dog/c", "dog/d", "dog/img_000", "dog/img_001"]


def test_image_folder_flat_layout_with_seeded_test_fraction(tmp_path):
    root = fx.write_image_folder(tmp_path, layout="flat", per_class=10)
    src = open_source("image_folder", root=root, test_fraction=0.3, seed=5)
    train, test = src.splits["train"], src.splits["test"]
    assert np.bincount(test.labels).tolist() == [3, 3, 3] and np.bincount(train.labels).tolist() == [7, 7, 7]
    keys = [s.key for s in load_all(train)] + [s.key for s in load_all(test)]
    assert sorted(keys) == sorted(f"{c}/img_{k:03d}" for c in ("cat", "dog", "fish") for k in range(10))
    again = open_source("image_folder", root=root, test_fraction=0.3, seed=5).splits["test"]
    assert [s.key for s in load_all(again)] == [s.key for s in load_all(test)]
    other = open_source("image_folder", root=root, test_fraction=0.3, seed=6).splits["test"]
    assert [s.key for s in load_all(other)] != [s.key for s in load_all(test)]


def test_image_folder_layout_errors(tmp_path):
    flat = fx.write_image_folder(tmp_path, layout="flat", name="flat")
    with pytest.raises(LayoutError, match=r"flat: no train/ and test/ folders, and no test_fraction"):
        open_source("image_folder", root=flat)
    root = fx.write_image_folder(tmp_path)
    with pytest.raises(LayoutError, match="test_fraction does not apply"):
        open_source("image_folder", root=root, test_fraction=0.2)
    (root / "test" / "bird").mkdir()
    with pytest.raises(LayoutError, match=r"image_folder/test: class folders differ .*\['bird'\]"):
        open_source("image_folder", root=root)
    (root / "train" / "bird").mkdir()
    with pytest.raises(LayoutError, match=r"train/bird: empty class folder"):
        open_source("image_folder", root=root)
    (root / "train" / "bird").rmdir()
    (root / "test" / "bird").rmdir()
    (root / "test").rename(root / "testing")
    with pytest.raises(LayoutError, match=r"image_folder/test: split folder missing"):
        open_source("image_folder", root=root)


# ------------------------------------------------------------------------------------------- CUB-to-Sketches
def test_cub2sketches_concatenates_five_datasets_in_paper_order(tmp_path):
    root = fx.write_cub2sketches(tmp_path)
    src = open_source("cub2sketches", root=root)
    assert src.classes[:3] == ["cubs_cropped/001.cubs_cropped_class_0",
                               "cubs_cropped/002.cubs_cropped_class_1",
                               "stanford_cars_cropped/001.stanford_cars_cropped_class_0"]
    assert [src.groups[c] for c in range(10)] == [d for d in fx.CUB2SKETCHES for _ in range(2)]
    train = src.splits["train"]
    assert train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    sample = train.load(19)
    assert sample.key == "sketches/002.sketches_class_1/img_001" and sample.label == 9
    assert np.array_equal(sample.image, fx.pattern(9, 10, 11))
    assert len(src.splits["test"]) == 10


def test_cub2sketches_missing_dataset_names_the_five_folders(tmp_path):
    root = fx.write_cub2sketches(tmp_path)
    (root / "wikiart").rename(root / "WikiArt")
    with pytest.raises(LayoutError, match=r"dataset folders \['wikiart'\] missing; expected a folder holding "
                                          r"the five image folders cubs_cropped, stanford_cars_cropped, "
                                          r"flowers, wikiart, sketches"):
        open_source("cub2sketches", root=root)


# ---------------------------------------------------------------------------------------------- miniImageNet
def test_miniimagenet_csv_splits_and_resplit(tmp_path):
    root = fx.write_miniimagenet(tmp_path)
    src = open_source("miniimagenet", root=root)
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 12, "val": 8, "test": 8}
    assert src.classes == sorted(src.classes) and len(src.classes) == 7
    assert src.splits["train"].labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert src.splits["test"].labels.tolist() == [5] * 4 + [6] * 4
    sample = src.splits["val"].load(0)
    assert src.classes[sample.label] == sample.key[:9] and sample.image.shape == (10, 12, 3)
    pooled = open_source("miniimagenet", root=root, test_fraction=0.25, seed=0)
    assert np.bincount(pooled.splits["test"].labels).tolist() == [1] * 7
    assert np.bincount(pooled.splits["train"].labels).tolist() == [3] * 7


def test_miniimagenet_layout_errors(tmp_path):
    root = fx.write_miniimagenet(tmp_path)
    victim = sorted((root / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(LayoutError, match=rf"images: 1 files named in the csv files are missing "
                                          rf".*{victim.name}"):
        open_source("miniimagenet", root=root)
    (root / "val.csv").write_text("file,wnid\n")
    with pytest.raises(LayoutError, match=r"val.csv: header \['file', 'wnid'\], expected filename,label"):
        open_source("miniimagenet", root=root)
    (root / "val.csv").unlink()
    with pytest.raises(LayoutError, match=r"val.csv: file not found"):
        open_source("miniimagenet", root=root)
