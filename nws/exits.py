"""The exit codes of every command, one table (README "Exit codes"), and how an error is printed with its code.

An error class that stands for an exit code says so in its own `EXIT_CODE` (DiskFull, FolderLocked, ArtifactError,
the non-finite guards, ...); bad input (a ValueError, KeyError or a missing file) is 2, and any other OSError that
says the disk is full is DiskFull. A command catches every exception and returns `nws.disk.handle(error)`: the
error printed in one line and its code; anything without a code is a bug and keeps its traceback. This module
imports nothing of the project: the error classes above it import their codes from here.
"""

from __future__ import annotations

import sys

OK = 0
STAGE_FAILED = 1  # a stage process of `nws pipeline run` failed (its own message is printed above)
BAD_INPUT = 2  # a config key, option, path or file that cannot be used (the message names it)
NON_FINITE = 3  # non-finite losses in a row (the message names the layer)
CORRUPTED = 4  # a stored file or checkpoint that fails its checks (the message names the file)
DEGENERATE = 5  # pretraining outputs the health check finds degenerate (--allow-degenerate keeps them)
AT_CHANCE = 6  # --strict: a task's final accuracy is not above chance (after everything is written)
LOCKED = 7  # another process writes the folder (its pid, host and command named)
DISK_FULL = 8  # no space left on device (the file named; the same command resumes once space is freed)
PREEMPTED = 9  # stopped at SIGUSR1 after writing a checkpoint (the same command resumes from it)

# what a code means, as a caller that only sees it (the pipeline, of its stage processes) says so
MEANINGS = {NON_FINITE: "non-finite losses in a row", CORRUPTED: "a stored file or checkpoint failed its checks",
            DEGENERATE: "degenerate pretraining outputs", AT_CHANCE: "a task at chance (--strict)",
            LOCKED: "its folder is in use", DISK_FULL: "no space left on device; free some and run again to resume",
            PREEMPTED: "stopped at SIGUSR1 after writing a checkpoint; run again to resume"}


def code_of(error: BaseException) -> int | None:
    """The exit code `error` stands for: its class's EXIT_CODE, else 2 for bad input, else None (a bug)."""
    code = getattr(type(error), "EXIT_CODE", None)
    if code is not None:
        return code
    if isinstance(error, (ValueError, KeyError, FileNotFoundError)):
        return BAD_INPUT
    return None


def fail(error: BaseException, code: int | None = None) -> int:
    """Print `error` in one line on stderr (`error: ...`; a preempted stage's note as it is) and return its code."""
    code = code_of(error) if code is None else code
    print(error if code == PREEMPTED else f"error: {error}", file=sys.stderr, flush=True)
    return code
