"""Checkpoint-on-signal under the real one-node Slurm (`--signal-before`): Slurm's USR1 before the time limit
reaches the batch shell (here sent by `scancel --signal=USR1 --batch`, deterministic where a short --time is not:
Slurm may send it up to a minute early); the shell passes it on to srun, whose 2 pretraining ranks write a
checkpoint after the same step and exit with code 9; the script requeues its own job, and the requeued job resumes
from that checkpoint and ends with bit for bit the pools of the uninterrupted local 2-rank run."""

from __future__ import annotations

import re
import subprocess
import time

from cluster.render import Resources
from cluster.submit import submit_jobs
from nws.io import read_json
from tests.cluster.pretrain_jobs import ended, job_log, pretrain_job, resumed, same_pools


def test_signalled_job_checkpoints_requeues_itself_and_resumes(slurm_env, digits, reference, tmp_path):
    out = tmp_path / "out"
    sub, job = pretrain_job(tmp_path, digits, out, Resources(signal_before=300))
    assert "#SBATCH --signal=B:USR1@300" in job.text
    [(_, job_id)] = submit_jobs([job], slurm_env)
    latest = out / "checkpoints" / "nws" / "latest.json"
    deadline = time.time() + 300
    while not (latest.is_file() and read_json(latest)["tag"] >= "e0000-b000004"):
        assert time.time() < deadline, ("no checkpoint within 300 s", job_log(sub, job_id, "err")[-2000:])
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job_id}_0"], check=True, env=slurm_env)
    while "restart 1" not in job_log(sub, job_id):  # the requeued job has started: the first run has ended
        assert time.time() < deadline + 300, ("the job was not requeued", job_log(sub, job_id)[-2000:],
                                              job_log(sub, job_id, "err")[-3000:])
        time.sleep(0.2)
    ended(sub, job_id, slurm_env, timeout=900)
    log, err = job_log(sub, job_id), job_log(sub, job_id, "err")
    assert "pretrain: USR1: checkpoint and stop" in log
    assert f"checkpoint written at the signal; requeueing job {job_id}" in log
    # every rank stopped after the same step with a checkpoint there (rank 0 says which), and nothing was lost:
    # the resumed run logged each step up to that checkpoint once
    [(tag, step)] = set(re.findall(r"SIGUSR1: checkpoint (e\d{4}-b\d{6}) written at step (\d+)/20", err))
    assert "restart 0" in log and "[pretrain nws] resumed from checkpoint " + tag in log, log[-3000:]
    resumed(sub.tracking_uri, out, tag)
    same_pools(reference, out)
