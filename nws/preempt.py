"""Checkpoint-on-signal: a job that is about to be stopped (Slurm's `--signal=USR1@S` before its time limit, `nws
cluster submit --signal-before S`) is sent SIGUSR1; a stage that caught it writes a checkpoint at its next step
(pretraining) or epoch (the task loop) and exits with EXIT_CODE, and the job script requeues the job, which resumes
from that checkpoint (DESIGN §5: every long run resumes, and here loses at most one step or epoch instead of
everything since the last periodic checkpoint).

SIGUSR1's default action kills a process, so every process of a stage catches it before its work starts (`catch`),
and the loops ask `requested()` at their boundaries; several ranks agree first (any rank's signal stops them all,
at the same step: their checkpoint is collective).
"""

from __future__ import annotations

import signal
import subprocess
import threading
from contextlib import contextmanager

from nws import exits

SIGNAL = signal.SIGUSR1
EXIT_CODE = exits.PREEMPTED  # "stopped at the signal with a checkpoint; run again to resume"

_received: list[int] = []


class Preempted(RuntimeError):
    """The stage stopped at SIGUSR1 after writing its checkpoint; the same command resumes from it."""

    EXIT_CODE = exits.PREEMPTED


def catch() -> None:
    """From now on SIGUSR1 is recorded instead of killing this process (main thread only: Python's rule; a stage
    driven from another thread keeps the default)."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(SIGNAL, lambda signum, frame: _received.append(signum))


@contextmanager
def forwarded_to(child: subprocess.Popen):
    """Meanwhile SIGUSR1 is recorded and passed on to `child` (a stage process run by the pipeline)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        _received.append(signum)
        stopping()  # the child stops with EXIT_CODE: this process waits for it, whatever srun does meanwhile
        if child.poll() is None:
            child.send_signal(SIGNAL)

    previous = signal.signal(SIGNAL, forward)
    try:
        yield
    finally:
        signal.signal(SIGNAL, previous)


def stopping() -> None:
    """This process is on its way out with EXIT_CODE: SIGTERM is ignored from now on. Under `srun
    --kill-on-bad-exit` the first rank to exit with that code has srun terminate the others; were they killed on
    their own way out, their exit would read "Terminated" instead of EXIT_CODE, and the job would not requeue."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def requested() -> bool:
    """Whether this process received SIGUSR1 since `catch()`."""
    return bool(_received)
