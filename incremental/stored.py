"""Checksums of stored files, whatever the method: a task folder is complete when `stored.json` lists every file
in it with its size and sha256 (written last), and nothing is rebuilt from a folder or shared file whose bytes no
longer match (DESIGN §5: a corrupted task artifact is a clear error naming the file).

A method that updates shared files when it stores a task (PackNet's network and owner map) writes the new versions
beside the old ones (`staged_path`: `<file>.next`) and the task's seal records their checksums. Sealing is the one
atomic switch: the staged files are then promoted (renamed over the old ones) and shared.json rewritten, and a run
killed anywhere in between rolls forward on its next start (`roll_forward`); a kill before the seal leaves the old
shared files intact and the unsealed task is trained again (issue 17: a kill between the shared files' rewrite and
their seal made every rerun exit 4)."""

from __future__ import annotations

import os
from pathlib import Path

from nws.artifact import ArtifactError
from nws.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

STORED = "stored.json"
SHARED = "shared.json"


class StoredTaskError(ArtifactError):
    """A stored task that cannot be read or verified (a file missing, its bytes changed, its content not what the
    configured network needs), whichever method stored it: the one error the loop and every method raise for one.
    It is NWS's ArtifactError (nws.artifact) specialised, so it keeps that error's exit code (4, nws.exits.CORRUPTED)
    and every caller that catches ArtifactError still catches it."""


def _records(paths: list[Path], base: Path) -> dict[str, dict]:
    return {str(p.relative_to(base)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def _verify(records: dict[str, dict], base: Path, listed_in: Path) -> None:
    for name, info in records.items():
        path = base / name
        if not path.is_file():
            raise StoredTaskError(f"{path}: missing (listed in {listed_in})")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise StoredTaskError(f"{path}: checksum mismatch with {listed_in}; the stored file is corrupted "
                                  "(delete the task folder to train the task again)")


def seal_task(folder: Path, meta: dict) -> dict:
    """Write `stored.json` over every file of the task folder: from now on the task counts as stored."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STORED and not p.name.startswith("."))
    if not files:
        raise StoredTaskError(f"{folder}: the method wrote no files for this task")
    doc = {"files": _records(files, folder), "meta": meta}
    atomic_write_json(folder / STORED, doc)
    return doc


def is_sealed(folder: Path) -> bool:
    return (Path(folder) / STORED).is_file()


def verify_task(folder: Path) -> dict:
    """The task's stored.json after checking every listed file; StoredTaskError naming the bad file otherwise."""
    folder = Path(folder)
    path = folder / STORED
    if not path.is_file():
        raise StoredTaskError(f"{folder}: not a stored task (no {STORED}); was the task finished?")
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


STAGED = ".next"


def staged_path(path: Path) -> Path:
    """Where a method writes the new version of shared file `path` while storing a task."""
    return Path(path).with_name(Path(path).name + STAGED)


def staged_records(method_dir: Path, files: dict[str, list[Path]]) -> dict[str, dict]:
    """{shared file name (relative to method_dir): size and sha256 of its staged version} for the staged files
    present: what the task's seal records."""
    method_dir = Path(method_dir)
    return {str(Path(p).relative_to(method_dir)): {"bytes": staged_path(p).stat().st_size,
                                                   "sha256": sha256_file(staged_path(p))}
            for group in files.values() for p in group if staged_path(p).is_file()}


def promote(method_dir: Path, staged: dict[str, dict], listed_in: Path) -> None:
    """Rename every staged file over its shared file, after checking its bytes against the seal; idempotent (a
    file already promoted must have the recorded bytes)."""
    method_dir = Path(method_dir)
    for name, info in staged.items():
        final = method_dir / name
        nxt = staged_path(final)
        if nxt.is_file():
            _verify({str(nxt.relative_to(method_dir)): info}, method_dir, listed_in)
            os.replace(nxt, final)
        else:
            _verify({name: info}, method_dir, listed_in)


def roll_forward(method_dir: Path, task_dirs: list[Path], files: dict[str, list[Path]]) -> bool:
    """On start: finish the promotion of the last sealed task's staged shared files (a run killed after the seal),
    then drop staged files no seal names (a run killed before it: the task is trained again). True when shared.json
    was rewritten."""
    method_dir = Path(method_dir)
    sealed = [d for d in task_dirs if is_sealed(d)]
    done = False
    if sealed:
        path = Path(sealed[-1]) / STORED
        staged = read_json(path).get("meta", {}).get("staged") or {}
        # shared.json not yet naming the sealed task's files: the promotion did not finish (staged files present
        # then are that task's; once it finished, staged files can only be an unsealed later task's)
        if staged and not _sealed_as(method_dir, staged):
            promote(method_dir, staged, path)
            seal_shared(method_dir, files)
            done = True
    for group in files.values():
        for p in group:
            staged_path(p).unlink(missing_ok=True)
    return done


def _sealed_as(method_dir: Path, staged: dict[str, dict]) -> bool:
    """shared.json already records the promoted files with the staged checksums."""
    path = Path(method_dir) / SHARED
    if not path.is_file():
        return False
    recorded = read_json(path)["files"]
    return all(recorded.get(name, {}).get("sha256") == info["sha256"] for name, info in staged.items())
