"""Checksums of stored files, whatever the method: a task folder is complete when `stored.json` lists every file
in it with its size and sha256 (written last), and nothing is rebuilt from a folder or shared file whose bytes no
longer match (DESIGN §5: a corrupted task artifact is a clear error naming the file)."""

from __future__ import annotations

from pathlib import Path

from nws.artifact import ArtifactError
from nws.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

STORED = "stored.json"
SHARED = "shared.json"


def _records(paths: list[Path], base: Path) -> dict[str, dict]:
    return {str(p.relative_to(base)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def _verify(records: dict[str, dict], base: Path, listed_in: Path) -> None:
    for name, info in records.items():
        path = base / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {listed_in})")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise ArtifactError(f"{path}: checksum mismatch with {listed_in}; the stored file is corrupted "
                                "(delete the task folder to train the task again)")


def seal_task(folder: Path, meta: dict) -> dict:
    """Write `stored.json` over every file of the task folder: from now on the task counts as stored."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STORED and not p.name.startswith("."))
    if not files:
        raise ArtifactError(f"{folder}: the method wrote no files for this task")
    doc = {"files": _records(files, folder), "meta": meta}
    atomic_write_json(folder / STORED, doc)
    return doc


def is_sealed(folder: Path) -> bool:
    return (Path(folder) / STORED).is_file()


def verify_task(folder: Path) -> dict:
    """The task's stored.json after checking every listed file; ArtifactError naming the bad file otherwise."""
    folder = Path(folder)
    path = folder / STORED
    if not path.is_file():
        raise ArtifactError(f"{folder}: not a stored task (no {STORED}); was the task finished?")
    doc = read_json(path)
    _verify(doc["files"], folder, path)
    return doc


def task_files(folder: Path) -> list[Path]:
    """The files stored.json lists, plus stored.json itself."""
    doc = read_json(Path(folder) / STORED)
    return [Path(folder) / name for name in doc["files"]] + [Path(folder) / STORED]


def seal_shared(method_dir: Path, files: dict[str, list[Path]]) -> None:
    """Record the checksums of the method's shared files (rewritten when a method updates them after a task)."""
    method_dir = Path(method_dir)
    paths = [Path(p) for group in files.values() for p in group]
    atomic_write_json(method_dir / SHARED, {"files": _records(paths, method_dir)})


def verify_shared(method_dir: Path) -> None:
    method_dir = Path(method_dir)
    path = method_dir / SHARED
    if path.is_file():
        _verify(read_json(path)["files"], method_dir, path)


def share_copy(src: Path, dst: Path, what: str, stored: list[int], missing_ok: bool = False) -> None:
    """Copy the shared file `src` (pools, a backbone, base indices) into the method folder as `dst`, once: a copy
    with the same bytes is kept; a different source is refused while tasks `stored` depend on the copy (with
    `missing_ok`, a missing copy is taken even then: those tasks were stored without it)."""
    if dst.is_file() and sha256_file(dst) == sha256_file(src):
        return
    if stored and (dst.is_file() or not missing_ok):
        raise ValueError(f"{src} differs from {dst}, the {what} tasks {stored} were stored with; use another "
                         "output folder for a new pretrained model")
    atomic_write_bytes(dst, src.read_bytes())
