"""A real one-node Slurm for the cluster tests (tests/cluster/local.py: munge, slurmctld and slurmd as root on
loopback ports, configured in a temp folder), started once per session and stopped at the end; no mock of sbatch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import local
from tests.pretrain.conftest import cli_env, pretrain_command

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
# the pretraining of the job tests: two short epochs, a checkpoint every 2 steps, no augmentation (deterministic
# on CPU)
RUN = ["pretrain.epochs=2", "pretrain.max_steps_per_epoch=10", "pretrain.checkpoint_every=2",
       "pretrain.augment=false", "pretrain.kind=nws"]
STEPS = 20


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = local.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    local.stop(cluster)


@pytest.fixture
def slurm_env(slurm, monkeypatch) -> dict[str, str]:
    """SLURM_CONF of the test cluster in this process (for in-process `nws cluster ...`) and for subprocesses;
    one BLAS thread per process and no rendezvous variables of another launcher."""
    from pretrain.launch import DIST_VARS

    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key in DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    return dict(os.environ)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The digits source as the data stage's command line prepares it (5 two-class tasks + `pretrain`)."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, "-m", "pipeline", "data", "prepare", "digits", "--out", str(out), "--format", "wds",
                    "--tasks", "blocks", "--classes-per-task", "2", "--quiet"], check=True, cwd=ROOT,
                   capture_output=True)
    return out


def queued(env: dict[str, str]) -> list[str]:
    """Ids of the jobs the test cluster holds that have not ended."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env, check=True)
    return out.stdout.split()


@pytest.fixture(scope="session")
def reference(digits, tmp_path_factory):
    """The local 2-rank run: torchrun --nproc_per_node 2 with DS_ACCELERATOR=cpu."""
    tmp = tmp_path_factory.mktemp("torchrun")
    proc = subprocess.run(pretrain_command(digits, tmp / "out", *RUN, ranks=2), cwd=ROOT, env=cli_env(tmp),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "out"
