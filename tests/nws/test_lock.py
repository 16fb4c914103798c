"""nws.lock: one writer per folder, the holder named; a stage child inherits its parent's lock, dies with its parent,
and while an orphan lives the lock stays held; a crash leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nws.lock import HELD_ENV, FolderLocked, folder_lock

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout: float = 20.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from nws.lock import folder_lock
        with folder_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=rf"{tmp_path}: in use by pid {holder.pid} on \S+ since .*-c"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path) as fd:  # the kernel released the dead holder's lock: no stale lock to clear
        assert fd is not None


def test_the_same_process_or_a_child_told_so_does_not_lock_twice(tmp_path, monkeypatch):
    with folder_lock(tmp_path):
        with pytest.raises(FolderLocked):  # a second open file description conflicts, even in one process
            with folder_lock(tmp_path):
                pass
        monkeypatch.setenv(HELD_ENV, str(tmp_path.resolve()))
        with folder_lock(tmp_path) as fd:  # what a stage child sees: its parent holds the lock for it
            assert fd is None


PARENT = """
import subprocess, sys
from nws.lock import child_options, folder_lock
with folder_lock(sys.argv[1]):
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2]], **child_options())
    print(child.pid, flush=True)
    child.wait()
"""


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_a_killed_parent_takes_its_child_along_and_an_orphan_keeps_the_lock(tmp_path, ignores_sigterm):
    """Issue 17: `kill -9` of the pipeline left its stage child training, and the rerun trained beside it. The child
    now gets SIGTERM when its parent dies; one that survives anyway still holds the inherited lock, so the rerun is
    refused (naming the parent's command) until the orphan is gone."""
    body = "import os, signal, sys, time\n"
    body += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_sigterm else ""
    body += f"assert {str(tmp_path.resolve())!r} in os.environ[{HELD_ENV!r}]\n"
    body += f"open({str(tmp_path / 'ready')!r}, 'w').close()\ntime.sleep(60)\n"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), body], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    child = int(parent.stdout.readline())
    try:
        assert _wait(lambda: (tmp_path / "ready").exists()) and _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        if not ignores_sigterm:
            assert _wait(lambda: not _alive(child)), "the child outlived its killed parent"
            with folder_lock(tmp_path):
                pass
            return
        time.sleep(0.5)
        assert _alive(child)
        with pytest.raises(FolderLocked, match=rf"in use by pid {parent.pid} "):
            with folder_lock(tmp_path):
                pass
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
    assert _wait(lambda: not _alive(child))
    with folder_lock(tmp_path):
        pass
