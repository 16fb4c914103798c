"""CIFAR-100 from the official python release (`cifar-100-python.tar.gz` or its extracted folder), with the
20 superclass tasks of Split-CIFAR-100 (the paper's benchmark, seed 004_; CPG/official NWS convention,
notes/frameworks.md §5).

The release is Python pickles: reading them is unavoidable. They are read with an unpickler that only builds
dicts, lists, bytes and numpy uint8 arrays, and only from these input files (never for our artifacts).
Members are read straight from the tarball, never extracted to disk. The superclass mapping ships as data
(cifar100_superclasses.json) and is checked against the `coarse_labels` stored in the pickles: some public
code hard-codes wrong lists, so a mismatch stops with an error naming the class."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np

from data_prep.sources.common import ArrayLoader, require_root
from data_prep.types import LayoutError, Source, Split

MEMBERS = ("train", "test", "meta")
FOLDER = "cifar-100-python"
TARBALL = "cifar-100-python.tar.gz"
EXPECTED = (f"{TARBALL} (or a folder holding it), or its extracted folder {FOLDER}/ with the pickles "
            f"{', '.join(MEMBERS)} (or a folder holding it)")
SUPERCLASSES_JSON = Path(__file__).resolve().parent.parent / "cifar100_superclasses.json"


def open_cifar100(root=None) -> Source:
    """Classes are the 100 fine names in the official fine-id order (alphabetical); `groups` maps each fine id
    to its superclass, so the `group` task split (order="alphabetical") gives the paper's 20 tasks."""
    path = require_root("cifar100", root, EXPECTED)
    raw = read_members(path)
    meta = raw["meta"]
    fine_names = _names(meta, b"fine_label_names", path, 100)
    coarse_names = _names(meta, b"coarse_label_names", path, 20)
    superclasses = load_superclasses()
    groups = check_superclasses(superclasses, fine_names, coarse_names, raw, path)
    splits = {}
    for split in ("train", "test"):
        data, fine, _ = _records(raw[split], f"{path}:{split}")
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[split] = Split(labels=fine, load=ArrayLoader(np.ascontiguousarray(images), fine, 5))
    return Source(name="cifar100", classes=fine_names, splits=splits, groups=groups)


def load_superclasses() -> dict[str, list[str]]:
    """superclass name -> its 5 fine class names (the shipped data file)."""
    with open(SUPERCLASSES_JSON) as f:
        return json.load(f)


def check_superclasses(superclasses: dict[str, list[str]], fine_names: list[str], coarse_names: list[str],
                       raw: dict[str, dict], path: Path) -> dict[int, str]:
    """Verify the shipped mapping against meta's names and every record's coarse label; return fine id ->
    superclass name. Any disagreement is a LayoutError naming the class and both superclasses."""
    expected = {fine: sup for sup, fines in superclasses.items() for fine in fines}
    if sorted(expected) != sorted(fine_names):
        missing = sorted(set(fine_names) ^ set(expected))
        raise LayoutError(f"{path}: fine class names in meta and {SUPERCLASSES_JSON.name} differ: {missing}")
    if sorted(superclasses) != sorted(coarse_names):
        missing = sorted(set(coarse_names) ^ set(superclasses))
        raise LayoutError(f"{path}: superclass names in meta and {SUPERCLASSES_JSON.name} differ: {missing}")
    for split in ("train", "test"):
        _, fine, coarse = _records(raw[split], f"{path}:{split}")
        pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
        for f, c in pairs:
            found, want = coarse_names[c], expected[fine_names[f]]
            if found != want:
                raise LayoutError(f"{path}:{split}: fine class {fine_names[f]!r} has coarse label {c} "
                                  f"({found!r}) but {SUPERCLASSES_JSON.name} puts it in {want!r}")
    return {i: expected[name] for i, name in enumerate(fine_names)}


def read_members(path: Path) -> dict[str, dict]:
    """The three pickles from the tarball (read in one pass, in memory) or from the extracted folder."""
    tarball = _locate(path)
    if tarball is None:
        folder = path / FOLDER if (path / FOLDER).is_dir() else path
        out = {}
        for name in MEMBERS:
            if not (folder / name).is_file():
                raise LayoutError(f"{folder / name}: file not found; expected {EXPECTED}")
            out[name] = _unpickle((folder / name).read_bytes(), folder / name)
        return out
    wanted = {f"{FOLDER}/{name}": name for name in MEMBERS}
    out = {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    data = tar.extractfile(member).read()
                    out[wanted[member.name]] = _unpickle(data, f"{tarball}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LayoutError(f"{tarball}: not a readable tarball ({e}); expected {EXPECTED}") from None
    missing = [m for m, name in wanted.items() if name not in out]
    if missing:
        raise LayoutError(f"{tarball}: members {missing} not found; expected {EXPECTED}")
    return out


def _locate(path: Path) -> Path | None:
    if path.is_file():
        return path
    if (path / TARBALL).is_file() and not (path / FOLDER).is_dir():
        return path / TARBALL
    return None


class _ArraysOnly(pickle.Unpickler):
    """Builds only what the official pickles hold: dicts, lists, bytes, ints and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means this is not the official file
        raise LayoutError(f"{where}: not a CIFAR-100 python pickle ({e}); expected {EXPECTED}") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{where}: pickle holds a {type(obj).__name__}, expected a dict")
    return obj


def _names(meta: dict, key: bytes, path: Path, count: int) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != count:
        raise LayoutError(f"{path}:meta: key {key!r} should list {count} class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _records(d: dict, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data N x 3072 uint8, fine labels, coarse labels) of one split pickle, checked."""
    for key in (b"data", b"fine_labels", b"coarse_labels"):
        if key not in d:
            raise LayoutError(f"{where}: key {key!r} missing; expected b'data', b'fine_labels', "
                              "b'coarse_labels'")
    data = np.asarray(d[b"data"])
    fine = np.asarray(d[b"fine_labels"], dtype=np.int64)
    coarse = np.asarray(d[b"coarse_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise LayoutError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 N x 3072")
    if not len(data) == len(fine) == len(coarse):
        raise LayoutError(f"{where}: {len(data)} images, {len(fine)} fine and {len(coarse)} coarse labels")
    if len(fine) and (fine.min() < 0 or fine.max() > 99 or coarse.min() < 0 or coarse.max() > 19):
        raise LayoutError(f"{where}: labels out of range (fine 0..99, coarse 0..19)")
    return data, fine, coarse
