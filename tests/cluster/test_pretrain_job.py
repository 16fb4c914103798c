"""The pretraining job under the real one-node Slurm: the pretrain template's `srun` starts 2 CPU tasks (gloo) that
take their ranks from the Slurm environment, and must give bit for bit the pools of the local 2-rank torchrun run;
a job cancelled mid-pretraining and submitted again resumes from its checkpoint. The job runs `python -m pipeline
pretrain` directly (the same command every rank of the pipeline's pretrain stage runs)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from cluster.render import render_job
from cluster.submit import record, submit_jobs
from nws.io import read_json
from pipeline.cli import main as nws
from tests.cluster.conftest import RUN, STEPS
from tests.cluster.pretrain_jobs import ended, job_log, pretrain_job, resumed, same_pools
from tests.pretrain.conftest import pretrain_command


def test_srun_tasks_give_the_pools_of_the_local_two_rank_run(slurm, slurm_env, digits, reference, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    sub, job = pretrain_job(tmp_path, digits, out)
    [(_, job_id)] = submit_jobs([job], slurm_env)
    ended(sub, job_id, slurm_env)
    log = job_log(sub, job_id)
    assert f"2 tasks on {slurm.node}, master 127.0.0.1:" in log, log[-2000:]
    summary = read_json(out / "pretrain.json")
    assert summary["world_size"] == 2 and summary["nws"]["steps"] == STEPS
    same_pools(reference, out)
    # the job's stage run is a child of the parent run the script exported
    run = MlflowClient(sub.tracking_uri).get_run(summary["nws"]["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == sub.parent_run_id


def test_cancelled_job_submitted_again_resumes_from_its_checkpoint(slurm_env, digits, reference, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    sub, job = pretrain_job(tmp_path, digits, out)
    first = submit_jobs([job], slurm_env)
    record(sub, first)
    job_id = first[0][1]
    latest = out / "checkpoints" / "nws" / "latest.json"
    deadline = time.time() + 300
    while not (latest.is_file() and read_json(latest)["tag"] >= "e0000-b000004"):
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    subprocess.run(["scancel", job_id], check=True, env=slurm_env)
    ended(sub, job_id, slurm_env, "CANCELLED", timeout=120)
    tag = read_json(latest)["tag"]
    assert not (out / "complete").exists() and tag < "e0002", tag  # cancelled mid-pretraining
    second = submit_jobs([job], slurm_env)  # the very same script, submitted again
    record(sub, second)
    ended(sub, second[0][1], slurm_env)
    same_pools(reference, out)
    resumed(sub.tracking_uri, out, tag)  # the same MLflow run continued from the checkpoint
    # `nws cluster status` shows both submissions with their states and logs
    capsys.readouterr()
    assert nws(["cluster", "status", "--dir", str(sub.runs_dir / "demo"), "--all", "--json"]) == 0
    rows = [r for entry in json.loads(capsys.readouterr().out) for r in entry["rows"]]
    assert [(r["job"], r["seed"], r["state"]) for r in rows] == [(f"{job_id}_0", 0, "CANCELLED"),
                                                                 (f"{second[0][1]}_0", 0, "COMPLETED")]
    assert all(Path(r["log"]).is_file() and Path(r["err"]).is_file() for r in rows)  # stdout and stderr


def test_requeued_job_resumes_and_appends_to_its_log(slurm_env, digits, reference, tmp_path):
    """--requeue: Slurm itself restarts the job (here `scontrol requeue`, as preemption would); the script runs
    again, the stage resumes from its checkpoint, and the log goes on in the same file."""
    out = tmp_path / "out"
    sub, _ = pretrain_job(tmp_path, digits, out)
    sub.resources.requeue = True
    job = render_job(sub, "pretrain", command=" ".join(map(shlex.quote, pretrain_command(digits, out, *RUN))))
    [(_, job_id)] = submit_jobs([job], slurm_env)
    latest = out / "checkpoints" / "nws" / "latest.json"
    deadline = time.time() + 300
    while not (latest.is_file() and read_json(latest)["tag"] >= "e0000-b000004"):
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    subprocess.run(["scontrol", "requeue", f"{job_id}_0"], check=True, env=slurm_env)
    while "restart 1" not in job_log(sub, job_id):  # the second run has started: the first one has ended
        assert time.time() < deadline, "the requeued job did not start again"
        time.sleep(0.2)
    tag = read_json(latest)["tag"]
    ended(sub, job_id, slurm_env, timeout=900)
    same_pools(reference, out)
    resumed(sub.tracking_uri, out, tag)
    log = job_log(sub, job_id)
    assert "restart 0" in log and "restart 1" in log, log[-2000:]
