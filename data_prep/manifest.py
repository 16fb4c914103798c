"""The data stage's manifest: what every unit holds, and the checks that make re-runs skip only verified work.

`<out>/manifest.json` is the stage's interface to the training stages (DESIGN §5 "files are the interface"): per
unit (each task, plus `pretrain`) and split it lists every file with its sha256 and size, sample counts per shard,
the classes, the image size and the train split's per-channel mean/std that loaders normalise with. It is written
last, after the files it describes, so an entry present means a complete unit; `verify_unit` re-hashes the files
before a re-run trusts it.

A task of a family (permuted, rotated: data_prep.tasks) is a *view*: its entry copies the entry of the unit that
holds its images (`view_of`, the all-classes unit `pretrain`) and adds the task's `transform`; it has no folder of
its own. `files_dir` says where a unit's files are, so every reader of `<out>/<task>` finds them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from base.layout import MANIFEST
from nws.io import atomic_write_json, read_json, sha256_file

BAD_LOG = "bad_images.log"
FORMAT_VERSION = 1


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`: what decides whether a unit on disk matches the request."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_record(path: Path, unit_dir: Path) -> dict:
    """{path relative to the unit, sha256, bytes} of a finished file."""
    return {"path": path.relative_to(unit_dir).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def split_files(split_entry: dict) -> list[dict]:
    """Every file record of one split entry (webdataset shards, then the .beton)."""
    files = list(split_entry.get("wds", {}).get("shards", []))
    if "ffcv" in split_entry:
        files.append(split_entry["ffcv"])
    return files


def verify_files(unit_dir: Path, files: list[dict], rehash: bool = True) -> list[str]:
    """Problems found when re-hashing `files` under `unit_dir` (empty when all match the recorded sha256); with
    `rehash` false only presence and sizes are checked (a stat each: what loaders and the pipeline check every time)."""
    problems = []
    for rec in files:
        path = Path(unit_dir) / rec["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {rec['bytes']}")
        elif rehash and sha256_file(path) != rec["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems


def files_dir(unit_dir: str | Path, entry: dict) -> Path:
    """The folder holding the files of the unit `unit_dir` (`<out>/<unit>`): its own, or for a view the folder of
    the unit it is a view of."""
    unit_dir = Path(unit_dir)
    return unit_dir.parent / entry["view_of"] if entry.get("view_of") else unit_dir


def verify_unit(unit_dir: Path, entry: dict, rehash: bool = True) -> list[str]:
    folder = files_dir(unit_dir, entry)
    return [p for split in entry["splits"].values() for p in verify_files(folder, split_files(split), rehash)]


def load_manifest(out: Path) -> dict:
    """The manifest under `out`, or an empty one when none was written yet."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "units": {}}
    manifest = read_json(path)
    if manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("units"), dict):
        raise ValueError(f"{path}: not a data_prep manifest of format_version {FORMAT_VERSION}")
    return manifest


def save_manifest(out: Path, manifest: dict) -> None:
    atomic_write_json(Path(out) / MANIFEST, manifest)


def read_unit(unit_dir: str | Path) -> dict:
    """The manifest entry of the unit stored in `unit_dir` (`<out>/<unit>`); a clear error when the unit is not
    complete (no entry) so a loader never reads a half-prepared unit."""
    unit_dir = Path(unit_dir)
    path = unit_dir.parent / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected the manifest written by `nws data prepare`")
    entry = load_manifest(unit_dir.parent)["units"].get(unit_dir.name)
    if entry is None:
        raise KeyError(f"{path}: no complete unit {unit_dir.name!r}; prepared units: "
                       f"{sorted(load_manifest(unit_dir.parent)['units'])}")
    return entry


@dataclass
class PixelStats:
    """Running per-channel sums of pixels on the 0..1 scale; float64 so 10^9 pixels (ImageNet) stay exact
    enough. Mergeable, so worker processes can each count a chunk."""

    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def add(self, image: np.ndarray) -> None:
        x = image.reshape(-1, 3).astype(np.float64) / 255.0
        self.count += len(x)
        self.total += x.sum(0)
        self.total_sq += np.square(x).sum(0)

    def merge(self, other: PixelStats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def mean_std(self) -> tuple[list[float], list[float]]:
        if self.count == 0:
            return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        std = np.sqrt(var)
        return [float(m) for m in mean], [float(s) if s > 0 else 1.0 for s in std]

    def to_dict(self) -> dict:
        return {"count": self.count, "total": self.total.tolist(), "total_sq": self.total_sq.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> PixelStats:
        return cls(int(d["count"]), np.asarray(d["total"], dtype=np.float64),
                   np.asarray(d["total_sq"], dtype=np.float64))
