"""A folder of class folders: `root/{train,test}/<class>/<images>` (optionally also `root/val/<class>/`), or a
flat `root/<class>/<images>` split by a seeded stratified `test_fraction`. This is how CUB-200, Stanford Cars,
Flowers-102, WikiArt and Sketches are distributed for CUB-to-Sketches (CPG/Piggyback PyTorch format), and the
format for a user's own data. Images: jpg, jpeg, png, bmp, webp (case-insensitive), directly in the class
folder; other files and hidden files are ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.sources.common import (
    IMAGE_EXTENSIONS,
    FileLoader,
    SubsetLoader,
    file_keys,
    list_class_dirs,
    list_images,
    require_root,
    stratified_split,
)
from data_prep.types import LayoutError, Source, Split

SPLITS = ("train", "val", "test")
EXPECTED = ("root/train/<class>/<images> and root/test/<class>/<images> (root/val/ optional), or a flat "
            "root/<class>/<images> with option test_fraction")


def open_image_folder(root=None, test_fraction: float | None = None, seed: int = 0, name: str = "image_folder"
                      ) -> Source:
    """Classes are the sorted class-folder names (of train/ in the split layout, where every split must hold
    the same class folders). `test_fraction` is only for the flat layout, where it is required."""
    root = require_root(name, root, EXPECTED)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder; expected {EXPECTED}")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        if test_fraction is not None:
            raise LayoutError(f"{root}: has split folders {present}, so test_fraction does not apply; "
                              f"expected {EXPECTED}")
        classes = _split_classes(root, present)
        splits = {s: folder_split(root / s, classes) for s in present}
        return Source(name=name, classes=classes, splits=splits)
    if test_fraction is None:
        raise LayoutError(f"{root}: no train/ and test/ folders, and no test_fraction for a flat layout; "
                          f"expected {EXPECTED}")
    classes = list_class_dirs(root)
    if not classes:
        raise LayoutError(f"{root}: no class folders; expected {EXPECTED}")
    whole = folder_split(root, classes)
    splits = {}
    train, test = stratified_split(whole.labels, test_fraction, seed)
    for split, idx in (("train", train), ("test", test)):
        splits[split] = Split(labels=whole.labels[idx], load=SubsetLoader(whole.load, idx))
    return Source(name=name, classes=classes, splits=splits)


def _split_classes(root: Path, present: list[str]) -> list[str]:
    for required in ("train", "test"):
        if required not in present:
            raise LayoutError(f"{root / required}: split folder missing; expected {EXPECTED}")
    classes = list_class_dirs(root / "train")
    if not classes:
        raise LayoutError(f"{root / 'train'}: no class folders; expected {EXPECTED}")
    for split in present[1:]:
        other = list_class_dirs(root / split)
        if other != classes:
            diff = sorted(set(classes) ^ set(other))
            raise LayoutError(f"{root / split}: class folders differ from {root / 'train'} ({diff[:5]}); "
                              "expected the same classes in every split")
    return classes


def folder_split(folder: Path, classes: list[str]) -> Split:
    """All images of `folder/<class>/` for the given classes (label = position in `classes`), sorted by class
    then file name; keys are `<class>/<file stem>`. An empty class folder is a LayoutError."""
    paths, rels, labels = list_folder(folder, classes)
    return Split(labels=labels, load=FileLoader(paths, file_keys(rels), labels))


def list_folder(folder: Path, classes: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(absolute paths, `<class>/<file>` relative paths, labels) of the images of `folder/<class>/`."""
    paths, rels, labels = [], [], []
    for label, cls in enumerate(classes):
        names = list_images(folder / cls)
        if not names:
            raise LayoutError(f"{folder / cls}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files); "
                              f"expected {EXPECTED}")
        paths += [str(folder / cls / n) for n in names]
        rels += [f"{cls}/{n}" for n in names]
        labels += [label] * len(names)
    return paths, rels, np.asarray(labels, dtype=np.int64)
