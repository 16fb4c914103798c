"""ILSVRC-2012 as distributed: `train/<wnid>/*.JPEG`, and `val/` either in class folders (`val/<wnid>/*.JPEG`)
or flat (`val/*.JPEG`) with a labels file. The pools of the paper are pretrained on it (seed 004_ §4).

Flat val labels, looked up in the root then in val/ (first found wins):
- `LOC_val_solution.csv` (the Kaggle release): header `ImageId,PredictionString`; the first token of
  PredictionString ("wnid x y x y ...") is the label of `<ImageId>.JPEG`;
- `val_labels.txt`: one `<filename> <wnid>` per line, or one `<filename> <int>` per line (an index into the
  sorted wnids, the Caffe `val.txt` convention), or a bare `<wnid>` per line in sorted file-name order
  (then the line count must equal the number of images).
The devkit's `ILSVRC2012_validation_ground_truth.txt` (ILSVRC ids 1..1000, not wnid-sorted) is not read.
The Kaggle root (`ILSVRC/Data/CLS-LOC/{train,val}` next to the csv) is accepted too.
Human-readable names come from `LOC_synset_mapping.txt` or `synset_words.txt` (`read_synset_names`);
classes stay the sorted wnids, which are unique where the human names are not."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from data_prep.sources.common import (
    FileLoader,
    file_keys,
    list_class_dirs,
    list_images,
    require_dir,
    require_root,
)
from data_prep.types import LayoutError, Source, Split

KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")
NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")
EXPECTED = ("train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, or a flat val/*.JPEG with LOC_val_solution.csv or "
            "val_labels.txt (in the root or in val/)")


def open_imagenet(root=None) -> Source:
    base = require_root("imagenet", root, EXPECTED)
    data = base / KAGGLE_DATA if not (base / "train").is_dir() and (base / KAGGLE_DATA).is_dir() else base
    train_dir = require_dir(data / "train", EXPECTED)
    wnids = list_class_dirs(train_dir)
    if not wnids:
        raise LayoutError(f"{train_dir}: no class folders; expected {EXPECTED}")
    class_id = {w: i for i, w in enumerate(wnids)}
    splits = {"train": _folder_split(train_dir, wnids, class_id)}
    val_dir = require_dir(data / "val", EXPECTED)
    val_classes = list_class_dirs(val_dir)
    if val_classes:
        unknown = sorted(set(val_classes) - set(class_id))
        if unknown:
            raise LayoutError(f"{val_dir}: class folders {unknown[:5]} are not in {train_dir}; "
                              f"expected {EXPECTED}")
        splits["val"] = _folder_split(val_dir, val_classes, class_id)
    else:
        splits["val"] = _flat_split(val_dir, [base, val_dir], wnids, class_id)
    return Source(name="imagenet", classes=wnids, splits=splits)


def _folder_split(folder: Path, wnids: list[str], class_id: dict[str, int]) -> Split:
    paths, rels, labels = [], [], []
    for w in wnids:
        names = list_images(folder / w)
        if not names:
            raise LayoutError(f"{folder / w}: empty class folder; expected {EXPECTED}")
        paths += [str(folder / w / n) for n in names]
        rels += [f"{w}/{n}" for n in names]
        labels += [class_id[w]] * len(names)
    labels = np.asarray(labels, dtype=np.int64)
    return Split(labels=labels, load=FileLoader(paths, file_keys(rels), labels))


def _flat_split(val_dir: Path, places: list[Path], wnids: list[str], class_id: dict[str, int]) -> Split:
    names = list_images(val_dir)
    if not names:
        raise LayoutError(f"{val_dir}: no images and no class folders; expected {EXPECTED}")
    label_file = next((p / f for f in LABEL_FILES for p in places if (p / f).is_file()), None)
    if label_file is None:
        raise LayoutError(f"{val_dir}: flat val folder but no {' or '.join(LABEL_FILES)} found in "
                          f"{' or '.join(str(p) for p in places)}; expected {EXPECTED}")
    read = _read_solution_csv if label_file.suffix == ".csv" else _read_labels_txt
    by_name = read(label_file, names, wnids)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise LayoutError(f"{label_file}: no label for {len(missing)} images in {val_dir} "
                          f"(e.g. {missing[:3]})")
    unknown = sorted({w for w in by_name.values() if w not in class_id})
    if unknown:
        raise LayoutError(f"{label_file}: wnids {unknown[:5]} have no train/<wnid> folder")
    labels = np.asarray([class_id[by_name[n]] for n in names], dtype=np.int64)
    return Split(labels=labels, load=FileLoader([str(val_dir / n) for n in names], file_keys(names), labels))


def _read_solution_csv(path: Path, names: list[str], wnids: list[str]) -> dict[str, str]:
    stem_to_name = {n.rsplit(".", 1)[0]: n for n in names}
    out = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise LayoutError(f"{path}: header {header}, expected ImageId,PredictionString")
        for line, row in enumerate(reader, start=2):
            if len(row) < 2 or not row[1].split():
                raise LayoutError(f"{path}:{line}: expected '<ImageId>,<wnid> x y x y ...', got {row}")
            if row[0] in stem_to_name:
                out[stem_to_name[row[0]]] = row[1].split()[0]
    return out


def _read_labels_txt(path: Path, names: list[str], wnids: list[str]) -> dict[str, str]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if rows and all(len(r) == 1 for r in rows):
        if len(rows) != len(names):
            raise LayoutError(f"{path}: {len(rows)} labels for {len(names)} images; one wnid per line in "
                              "sorted file-name order needs the same count")
        return {n: r[0] for n, r in zip(names, rows, strict=True)}
    out = {}
    for line, r in enumerate(rows, start=1):
        if len(r) != 2:
            raise LayoutError(f"{path}:{line}: expected '<filename> <wnid or class index>', "
                              f"got {' '.join(r)!r}")
        name, label = Path(r[0]).name, r[1]
        if label.isdigit():
            if int(label) >= len(wnids):
                raise LayoutError(f"{path}:{line}: class index {label} but only {len(wnids)} train classes")
            label = wnids[int(label)]
        out[name] = label
    return out


def read_synset_names(root) -> dict[str, str]:
    """wnid -> human-readable name from LOC_synset_mapping.txt or synset_words.txt ("<wnid> <words>" lines);
    empty when neither file is present."""
    for name in NAME_FILES:
        path = Path(root) / name
        if path.is_file():
            pairs = (line.strip().split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
            return {p[0]: (p[1] if len(p) > 1 else p[0]) for p in pairs}
    return {}
