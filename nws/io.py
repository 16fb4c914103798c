"""File rules every stage follows (DESIGN §5): atomic writes, checksums, safetensors + JSON, never pickle, and a full
disk named with the file being written (DiskFull, exit code 8)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nws import exits

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# how writers other than Python's own say ENOSPC: safetensors (Rust), SQLite (MLflow's store), and torch.save, whose
# C++ stream says only "iostream error" (issue 17): that one counts when the disk is (nearly) full right after it
NO_SPACE_WORDS = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded")
STREAM_WORDS = ("iostream error", "pytorchstreamwriter failed", "file write failed", "unexpected pos")
NEARLY_FULL = 16 * 2**20  # bytes


class DiskFull(OSError):
    """Writing `path` failed for lack of space. Every writer of the project writes a temp file and renames it, so
    what was being written is not counted (and its temp file is removed); freeing space and running the same
    command again goes on from the last complete output."""

    EXIT_CODE = exits.DISK_FULL

    def __init__(self, path: str | os.PathLike):
        free = free_bytes(path)
        where = "" if free is None else f" ({free / 2**20:.1f} MiB free when it failed)"
        super().__init__(errno.ENOSPC, f"{path}: no space left on device{where}; free some space and run the same "
                         "command again: it goes on from its last complete output", str(path))

    def __str__(self) -> str:
        return self.strerror


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system of `path` (or of its nearest existing folder)."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def disk_full(error: BaseException, path: str | os.PathLike) -> DiskFull | None:
    """`error` as a DiskFull naming `path` when it says the disk (or quota) is full, else None."""
    if isinstance(error, DiskFull):
        return error
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return DiskFull(error.filename or path)
    text = str(error).lower()
    if any(w in text for w in NO_SPACE_WORDS):
        return DiskFull(path)
    if any(w in text for w in STREAM_WORDS) and (free_bytes(path) or 0) < NEARLY_FULL:
        return DiskFull(path)
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met inside the block into DiskFull naming `path`; every other error passes unchanged."""
    try:
        yield
    except Exception as e:
        full = disk_full(e, path)
        if full is None:
            raise
        raise full from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path):
    """Give the temp file the mode a plain open() would (mkstemp makes it 0600), then rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename, so a reader never sees a
    half-written file and an interrupted write leaves the old file (or nothing) in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _publish(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """safetensors file written atomically (tensors made contiguous, on CPU)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
            _publish(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
