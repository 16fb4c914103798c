"""A small file system for the full-disk tests (issue 17): a tmpfs of a given size mounted on a fresh folder
(root only, as the cluster tests' daemons), grown with `resize` to play "the user freed some space", and unmounted
with everything on it at the end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()} (the full-disk tests mount a tmpfs: they "
                           "need root)")


class SmallDisk:
    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        """The tmpfs's new size (`mount` units: 300k, 20m); files on it stay."""
        _run("mount", "-o", f"remount,size={size}", str(self.path))


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[SmallDisk]:
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
