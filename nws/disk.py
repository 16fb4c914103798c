"""A full disk, named with the file being written (DiskFull, exit code 8): every writer of the project turns the
many ways a library says ENOSPC into one error a user can act on, and a command that meets one anyway ends with it
(`handle`). It sits above the exit-code table (nws.exits) and below the file rules (nws.io) that use it."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def handle(error: BaseException, where: str | Path = "") -> int:
    """End a command on `error`: print it and return its exit code (a full disk met by a writer that does not name
    its file is named by `where`, the command's output folder); an error with no code is raised again (a bug)."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
        error = disk_full(error, where or "the output folder") or error
    code = exits.code_of(error)
    if code is None:
        raise error
    return exits.fail(error, code)
