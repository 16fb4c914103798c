"""What every source shares: listing image files cheaply and deterministically, decoding one image into
the contract's HxWx3 uint8 (data_prep/types.py), loaders that are plain picklable objects (so writers may
hand a split to worker processes), and the seeded stratified split for datasets without a test split."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.types import BadImage, LayoutError, Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside `folder` (extensions case-insensitive, hidden files and
    sub-folders ignored). Only directory entries are read, never file contents: listing stays cheap."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_name(e.name) and e.is_file())


def list_class_dirs(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `folder`: the class folders of an ImageFolder layout."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path}: folder not found; expected {expected}")
    return path


def require_root(source: str, root, expected: str) -> Path:
    if root is None:
        raise LayoutError(f"source {source!r} needs a root: {expected}")
    path = Path(root).expanduser()
    if not path.exists():
        raise LayoutError(f"{path}: not found; expected {expected}")
    return path


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode with Pillow to RGB uint8. `.load()` forces the full decode, so a truncated file fails here
    (Pillow only reads the header at open); every decode failure becomes BadImage naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = "empty file (0 bytes)" if _is_empty(path) else f"cannot decode image ({e})"
        raise BadImage(str(path), reason) from None
    return np.asarray(rgb, dtype=np.uint8)


def _is_empty(path) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def file_keys(rel_paths: list[str]) -> list[str]:
    """Sample keys from relative paths: the extension is dropped and dots in the file name become '_'
    (webdataset groups tar members by the text before the first dot of the name). When two files differ only
    by extension, both keep it (as '_ext') so keys stay unique within a split."""
    stems = [_stem_key(p, keep_ext=False) for p in rel_paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [_stem_key(p, keep_ext=True) if seen[s] > 1 else s for p, s in zip(rel_paths, stems, strict=True)]


def _stem_key(rel: str, keep_ext: bool) -> str:
    head, _, name = rel.rpartition("/")
    if not keep_ext:
        name = name.rsplit(".", 1)[0]
    name = name.replace(".", "_")
    return f"{head}/{name}" if head else name


@dataclass
class FileLoader:
    """Split.load for image files: record i -> decoded Sample (BadImage for an undecodable file)."""

    paths: list[str]
    keys: list[str]
    labels: np.ndarray

    def __call__(self, i: int) -> Sample:
        return Sample(key=self.keys[i], image=decode_image(self.paths[i]), label=int(self.labels[i]))


@dataclass
class ArrayLoader:
    """Split.load for sources held in memory as uint8 NxHxWx3, or NxHxW grey (replicated to 3 channels per
    sample, so the array stays a third of the size): keys are record indices, zero-padded."""

    images: np.ndarray
    labels: np.ndarray
    key_width: int = 6

    def __call__(self, i: int) -> Sample:
        image = self.images[i]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return Sample(key=f"{i:0{self.key_width}d}", image=image, label=int(self.labels[i]))


@dataclass
class SubsetLoader:
    """Record i of a split is record index[i] of a larger loader (keys stay those of the larger loader)."""

    base: ArrayLoader | FileLoader
    index: np.ndarray

    def __call__(self, i: int) -> Sample:
        return self.base(int(self.index[i]))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split for datasets without an official test split: in each class (ascending id) a
    RandomState(seed) permutation sends round(n * test_fraction) records to test, clipped to 1..n-1 so every
    class with two or more records is in both splits. Returns sorted (train, test) record indices."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(max(int(round(len(idx) * test_fraction)), 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)
