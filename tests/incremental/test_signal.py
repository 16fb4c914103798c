"""Checkpoint-on-signal in the task loop (nws.preempt): a real SIGUSR1 sent to this process during task 1's first
epoch makes the loop stop after that epoch's checkpoint with Preempted (the CLI's exit code 9), and the same call
then resumes there and stores the same bytes as a run that was never signalled."""

import os
import signal

import pytest

from incremental.loop import run
from nws import preempt
from nws.io import read_json
from tests.incremental.fixtures import make_config


@pytest.fixture
def caught():
    """SIGUSR1 caught as the CLIs catch it; both handlers put back afterwards (Preempted ignores SIGTERM)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    preempt.catch()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_usr1_stops_the_task_loop_after_an_epoch_checkpoint_and_it_resumes(digits, pretrained, tmp_path, caught):
    cfg = make_config(num_tasks=2)
    calls = []

    def signal_in_task_1(t, epoch):
        calls.append((t, epoch))
        if (t, epoch) == (1, 0):
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(preempt.Preempted, match="task 1: SIGUSR1: checkpoint of epoch 1/2 written"):
        run(cfg, digits, pretrained, tmp_path / "a", methods=["nws"], on_epoch_end=signal_in_task_1)
    assert calls == [(0, 0), (0, 1), (1, 0)]  # stopped at the end of the epoch the signal came in
    checkpoints = tmp_path / "a" / "nws" / "checkpoints" / "task01"
    assert read_json(checkpoints / "latest.json") and not (tmp_path / "a" / "nws" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # on its way out: srun's SIGTERM must not kill it
    preempt.catch()  # a new process, as the requeued job's
    calls.clear()
    resumed = run(cfg, digits, pretrained, tmp_path / "a", methods=["nws"], on_epoch_end=signal_in_task_1)["nws"]
    assert calls == [(1, 1)]  # task 1 went on after the epoch it stopped at
    straight = run(cfg, digits, pretrained, tmp_path / "b", methods=["nws"])["nws"]
    for folder in ("task00", "task01"):
        for name in ("indices.bin", "state.safetensors"):
            assert (tmp_path / "a" / "nws" / folder / name).read_bytes() == \
                   (tmp_path / "b" / "nws" / folder / name).read_bytes()
    assert resumed["acc_matrix"] == straight["acc_matrix"]
