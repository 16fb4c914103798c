"""Submissions Slurm refuses: the reason sbatch gives is shown, the exit code is 2, nothing is queued, recorded or
logged to MLflow (tested against the real one-node Slurm of conftest.py)."""

from __future__ import annotations

import pytest

from pipeline.cli import main as nws
from tests.cluster.conftest import DEMO, queued


@pytest.mark.parametrize(("options", "reason"), [
    (["--partition", "nosuchpartition"], "Invalid partition name specified"),
    (["--nodes", "3"], "Requested node configuration is not available"),  # the cluster has one node
    (["--tasks-per-node", "64"], "Requested node configuration is not available"),  # more CPUs than it has
])
def test_bad_request_fails_at_submission_with_slurms_reason(slurm_env, tmp_path, capsys, monkeypatch, options,
                                                            reason):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = queued(slurm_env)
    code = nws(["cluster", "submit", "-c", str(DEMO), "--seeds", "2", "--runs-dir", "runs", *options])
    err = capsys.readouterr().err
    assert code == 2 and reason in err, err
    assert "pretrain job" in err or options[0] == "--partition"  # the job that asked too much is named
    assert queued(slurm_env) == before
    assert not (tmp_path / "runs" / "demo" / "cluster" / "submissions.json").exists()
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # refused before the parent run was created
