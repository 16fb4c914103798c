"""One writer per output folder: an advisory lock that the holder's death releases, and that names the holder.

Issue 17: two `nws pipeline run` of one config both trained in one folder (one died on a half-written file), and a
stage child left running by a killed pipeline trained beside the rerun. So every writer of a stage folder holds
`<folder>/.lock` (`flock`, released by the kernel when the last process holding it dies, so a crash leaves no
stale lock) and writes its pid, host, start time and command beside it (`.lock.json`) for the message a second
writer gets.

A pipeline holds the lock of the stage it runs and hands the open lock to the stage's child process (the fd is
inherited, and NWS_HELD_LOCKS names the folder so the child does not lock it again); the child is asked to die with
its parent (PR_SET_PDEATHSIG). While an orphaned child is still alive it still holds the lock, so a rerun is refused
and names it. `filelock` would hide the descriptor that the child must inherit, hence fcntl here.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nws import exits

LOCK = ".lock"
HOLDER = ".lock.json"
EXIT_CODE = exits.LOCKED  # every command refused because another process writes its folder
HELD_ENV = "NWS_HELD_LOCKS"  # os.pathsep-separated folders whose lock a parent process holds for this one


_HELD: dict[str, int] = {}  # folder -> fd of the locks this process holds (handed to its stage children)


class FolderLocked(RuntimeError):
    """Another live process writes this folder; the message names it (pid, host, since, command)."""

    EXIT_CODE = exits.LOCKED


def _held_by_parent(folder: Path) -> bool:
    return str(folder.resolve()) in os.environ.get(HELD_ENV, "").split(os.pathsep)


def _holder_text(folder: Path) -> str:
    try:
        h = json.loads((folder / HOLDER).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return f"pid {h['pid']} on {h['host']} since {since} (`{h['command']}`)"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextmanager
def folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[int | None]:
    """Hold `folder`'s lock while the block runs; yields the lock's fd (None when not taken: `enabled` false, e.g.
    on ranks other than 0, or when a parent holds it for this process). Raises FolderLocked naming the holder."""
    folder = Path(folder)
    if not enabled or _held_by_parent(folder):
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLocked(f"{folder}: in use by {_holder_text(folder)}; wait for it to finish or stop it "
                               "(one writer per run folder)") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(sys.argv)[:300]}
        tmp = folder / f"{HOLDER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, folder / HOLDER)
        _HELD[str(folder.resolve())] = fd
        yield fd
    finally:
        _HELD.pop(str(folder.resolve()), None)
        os.close(fd)  # releases the lock unless a child still holds the inherited descriptor


def child_options() -> dict:
    """subprocess keyword arguments for a stage child: the locks this process holds, inherited (so they stay held
    while an orphaned child lives) and named in its environment (so it does not lock them again), and death with
    its parent. Merge `env` with the caller's own."""
    held = [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]
    return {"pass_fds": tuple(_HELD.values()), "preexec_fn": die_with_parent,
            "env": {**os.environ, HELD_ENV: os.pathsep.join([*held, *_HELD])}}


def die_with_parent() -> None:
    """For subprocess's preexec_fn: SIGTERM this (child) process when its parent dies (Linux prctl; elsewhere
    nothing), so a killed pipeline leaves no stage running behind it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
