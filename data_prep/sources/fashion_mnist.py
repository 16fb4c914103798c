"""Fashion-MNIST from its four IDX files (the format of the official release and of the Debian package
`dataset-fashion-mnist`). IDX is parsed here with numpy: a big-endian magic (2051 images, 2049 labels), then
one big-endian uint32 per dimension, then the uint8 payload."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from data_prep.sources.common import ArrayLoader, require_root
from data_prep.types import LayoutError, Source, Split

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
EXPECTED = "a folder with " + ", ".join(f for pair in FILES.values() for f in pair) + " (gzip or unpacked)"


def open_fashion_mnist(root=None) -> Source:
    """60,000 train / 10,000 test 28x28 grey images, 10 classes (CLASSES order = the label ids)."""
    folder = require_root("fashion_mnist", root if root is not None else DEFAULT_ROOT, EXPECTED)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: not a folder; expected {EXPECTED}")
    splits = {}
    for split, (image_file, label_file) in FILES.items():
        images = read_idx(_find(folder, image_file), IMAGES_MAGIC, ndim=3)
        labels = read_idx(_find(folder, label_file), LABELS_MAGIC, ndim=1).astype(np.int64)
        if len(images) != len(labels):
            raise LayoutError(f"{folder}: {image_file} has {len(images)} images but {label_file} has "
                              f"{len(labels)} labels; expected the same count")
        if labels.size and labels.max() >= len(CLASSES):
            raise LayoutError(f"{folder / label_file}: label {labels.max()} out of range "
                              f"0..{len(CLASSES) - 1}")
        splits[split] = Split(labels=labels, load=ArrayLoader(images, labels))
    return Source(name="fashion_mnist", classes=list(CLASSES), splits=splits)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise LayoutError(f"{folder / name}: file not found; expected {EXPECTED}")


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An IDX file of uint8 data as an array of `ndim` dimensions; any mismatch is a LayoutError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise LayoutError(f"{path}: cannot read ({e}); expected an IDX file, gzipped if .gz") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LayoutError(f"{path}: {len(raw)} bytes, shorter than an IDX header; expected magic {magic}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise LayoutError(f"{path}: IDX magic {found}, expected {magic} (uint8 data, {ndim} dimensions)")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise LayoutError(f"{path}: dims {dims} need {int(np.prod(dims))} data bytes, "
                          f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
