"""Where a run came from (issue 19): the tags every MLflow run the project starts gets, so a number in the UI can
be traced to the code, the machine and the command that produced it.

- `mlflow.source.git.commit` (shown by the UI as the run's git commit) and `git.dirty` (`git status --porcelain`
  is not empty: the commit alone does not say what ran), only inside a git checkout: an installed copy or a tarball
  gets neither, and no error;
- `host`, `mlflow.user` (the UI's user column), `command` (sys.argv of the process, shell-quoted);
- `version.torch`, `version.deepspeed` (from the installed packages' metadata, without importing them).

Computed once per process (git is asked once, with a timeout), so tagging costs nothing per run.
"""

from __future__ import annotations

import functools
import getpass
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]  # the project's checkout (or installed copy)
MAX_TAG_CHARS = 5000  # a command line longer than this is cut (MLflow limits tag values)
PACKAGES = ("torch", "deepspeed")
GIT_TIMEOUT = 20


def _git(root: Path, *args: str) -> str | None:
    """Output of `git args` in `root`, None when git is missing or `root` is not in a checkout."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_tags(root: Path) -> dict[str, str]:
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {}
    status = _git(root, "status", "--porcelain")
    tags = {"mlflow.source.git.commit": commit.strip()}
    if status is not None:
        tags["git.dirty"] = str(bool(status.strip())).lower()
    return tags


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return None


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.cache
def provenance(root: Path = SOURCE) -> dict[str, str]:
    """The tags above for code in `root` (default: this project's source folder)."""
    user = _user()
    return {**git_tags(root), "host": socket.gethostname(), **({"mlflow.user": user} if user else {}),
            "command": shlex.join(sys.argv)[:MAX_TAG_CHARS], **versions()}
