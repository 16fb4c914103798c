"""The pretraining job of the cluster tests: two short epochs of `python -m pretrain` on the digits under the
pretrain template, and the checks that it gave the pools of the local 2-rank run (tests/cluster/conftest.py's
`reference`)."""

from __future__ import annotations

import shlex
import sys
import time

import pytest
import torch

from cluster.parent import open_parent
from cluster.render import Resources, Submission, render_job
from cluster.status import wait
from nws.io import load_tensors
from tests.cluster.conftest import DEMO, ROOT, RUN
from tests.pretrain.conftest import pretrain_command


def submission(tmp, uri: str, parent: str) -> Submission:
    return Submission(config=DEMO, name="demo", seeds=[0], runs_dir=tmp / "runs", workdir=ROOT, python=sys.executable,
                      tracking_uri=uri, parent_run_id=parent, stamp=time.strftime("%Y%m%d-%H%M%S"))


def pretrain_job(tmp, digits, out, resources: Resources | None = None):
    """The pretrain template with `python -m pretrain ...` as its command, under a fresh MLflow parent run."""
    from pipeline.config import experiment_schema, load_config

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


def job_log(sub: Submission, job_id: str) -> str:
    return (sub.folder / "logs" / f"pretrain-{job_id}_0.out").read_text()


def ended(sub: Submission, job_id: str, env, state: str = "COMPLETED", timeout: float = 600) -> None:
    """Wait for the job (array of one task, seed 0) to end in `state`; its log is the failure message."""
    states = wait([job_id], env, timeout=timeout)
    assert states == {f"{job_id}_0": state}, (states, job_log(sub, job_id)[-3000:])
