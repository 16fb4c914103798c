"""CUB-to-Sketches (seed 004_ §4): five fine-grained datasets learned in sequence after ImageNet, in the
paper's order CUB-200 -> Stanford Cars -> Flowers-102 -> WikiArt -> Sketch. The root holds the five datasets
under the folder names of the official NWS/CPG release, each an image folder with train/ and test/. Their
classes are concatenated in that order (ids 0..942), prefixed by the dataset folder, and `groups` maps each
class to its dataset, so the `group` task split with order="source" gives the five tasks in paper order."""

from __future__ import annotations

import numpy as np

from data_prep.sources.common import FileLoader, require_root
from data_prep.sources.image_folder import open_image_folder
from data_prep.types import LayoutError, Source, Split

DATASETS = ("cubs_cropped", "stanford_cars_cropped", "flowers", "wikiart", "sketches")
EXPECTED = (f"a folder holding the five image folders {', '.join(DATASETS)}, each with train/<class>/ and "
            "test/<class>/")


def open_cub2sketches(root=None) -> Source:
    root = require_root("cub2sketches", root, EXPECTED)
    missing = [d for d in DATASETS if not (root / d).is_dir()]
    if missing:
        raise LayoutError(f"{root}: dataset folders {missing} missing; expected {EXPECTED}")
    parts = [open_image_folder(root / d, name=d) for d in DATASETS]
    for d, part in zip(DATASETS, parts, strict=True):
        if set(part.splits) != {"train", "test"}:
            raise LayoutError(f"{root / d}: splits {sorted(part.splits)}, expected exactly train/ and test/")
    classes, groups = [], {}
    for d, part in zip(DATASETS, parts, strict=True):
        for cls in part.classes:
            groups[len(classes)] = d
            classes.append(f"{d}/{cls}")
    splits = {}
    for split in ("train", "test"):
        paths, keys, labels, offset = [], [], [], 0
        for d, part in zip(DATASETS, parts, strict=True):
            loader = part.splits[split].load
            paths += loader.paths
            keys += [f"{d}/{k}" for k in loader.keys]
            labels.append(loader.labels + offset)
            offset += len(part.classes)
        labels = np.concatenate(labels)
        splits[split] = Split(labels=labels, load=FileLoader(paths, keys, labels))
    return Source(name="cub2sketches", classes=classes, splits=splits, groups=groups)
