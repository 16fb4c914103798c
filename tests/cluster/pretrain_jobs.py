"""The pretraining job of the cluster tests: two short epochs of `python -m pipeline pretrain` on the digits under
the pretrain template, and the checks that it gave the pools of the local 2-rank run (tests/cluster/conftest.py's
`reference`)."""

from __future__ import annotations

import shlex
import sys
import time

import pytest
import torch

from cluster.render import Resources, Submission, render_job
from cluster.status import wait
from nws.io import load_tensors, read_json
from tests.cluster.conftest import DEMO, ROOT, RUN, STEPS
from tests.pretrain.conftest import pretrain_command


def submission(tmp, uri: str, parent: str) -> Submission:
    return Submission(config=DEMO, name="demo", seeds=[0], runs_dir=tmp / "runs", workdir=ROOT, python=sys.executable,
                      tracking_uri=uri, parent_run_id=parent, stamp=time.strftime("%Y%m%d-%H%M%S"))


def pretrain_job(tmp, digits, out, resources: Resources | None = None):
    """The pretrain template with `python -m pipeline pretrain ...` as its command, under a fresh MLflow parent run."""
    from base.config import load_config
    from pipeline.config import experiment_schema
    from pipeline.slurm import open_parent

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        parent, uri = open_parent(load_config(experiment_schema(), DEMO), tmp / "runs", "test")
    sub = submission(tmp, uri, parent)
    sub.resources = resources or sub.resources
    command = " ".join(map(shlex.quote, pretrain_command(digits, out, *RUN)))
    return sub, render_job(sub, "pretrain", command=command)


def same_pools(a_dir, b_dir) -> None:
    a, b = load_tensors(a_dir / "pools.safetensors"), load_tensors(b_dir / "pools.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (a_dir / "base_model" / "indices.bin").read_bytes() == (b_dir / "base_model" / "indices.bin").read_bytes()


def job_log(sub: Submission, job_id: str, suffix: str = "out") -> str:
    """The job's stdout (`out`) or stderr (`err`) file, "" while it is not written."""
    path = sub.folder / "logs" / f"pretrain-{job_id}_0.{suffix}"
    return path.read_text() if path.is_file() else ""


def ended(sub: Submission, job_id: str, env, state: str = "COMPLETED", timeout: float = 600) -> None:
    """Wait for the job (array of one task, seed 0) to end in `state`; its logs are the failure message."""
    states = wait([job_id], env, timeout=timeout)
    assert states == {f"{job_id}_0": state}, (states, job_log(sub, job_id)[-2000:], job_log(sub, job_id, "err")[-3000:])


def resumed(uri: str, out, tag: str) -> None:
    """The run went on from checkpoint `tag` (eEEEE-bBBBBBB): every step up to it has exactly one loss, as an
    uninterrupted run's (a restart from scratch would log them twice); steps logged between that checkpoint and
    the interruption are logged again by the resumed run; no step is missing."""
    epoch, batch = (int(part[1:]) for part in tag.split("-"))
    resumed_at = epoch * 10 + batch  # max_steps_per_epoch=10, one step per batch
    steps = history(uri, out)
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps
    assert [s for s in steps if s <= resumed_at] == list(range(1, resumed_at + 1)), (tag, steps)


def history(uri: str, out) -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = read_json(out / "summary_nws.json")["mlflow_run_id"]
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")]
