"""The demo pipeline submitted to the real one-node Slurm with 2 seeds: data, then pretraining and the task loop
as job arrays over the seeds (2 srun CPU ranks per pretraining task), then the report, which aggregates the seeds
as mean ± std. Every job logs to one MLflow store under the submission's parent run."""

from __future__ import annotations

import json

import pytest

from cluster.status import wait
from nws.io import read_json
from pipeline.cli import main as nws
from tests.cluster.conftest import DEMO

TINY = ["model.width=0.125", "model.pool_size=16", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=4",
        "pretrain.milestones=[]", "pretrain.batch_size=32", "pretrain.eval_batch_size=512", "pretrain.threads=1",
        "pretrain.checkpoint_every=0", "incremental.num_tasks=2", "incremental.epochs=1",
        "incremental.milestones=[]", "incremental.max_steps_per_epoch=3", "incremental.augment=false",
        "incremental.methods=[nws,finetune]"]


@pytest.fixture(scope="module")
def submitted(slurm, tmp_path_factory):
    """`nws cluster submit -c demo.yaml --seeds 2`, run to the end; returns (runs folder, status rows, record)."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SLURM_CONF", str(slurm.conf))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("NWS_MLFLOW_PARENT_RUN_ID", raising=False)
        assert nws(["cluster", "submit", "-c", str(DEMO), "--seeds", "2", "--runs-dir", "runs", *TINY]) == 0
        runs = root / "runs"
        [entry] = read_json(runs / "demo" / "cluster" / "submissions.json")["submissions"]
        wait([job["job_id"] for job in entry["jobs"]], timeout=1500, poll=2.0)
        status = _status(runs)
    return runs, status, entry


def _status(runs) -> dict:
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        assert nws(["cluster", "status", "--dir", str(runs / "demo"), "--json"]) == 0
    [entry] = json.loads(buffer.getvalue())
    return entry


def test_every_job_and_array_task_completed(submitted):
    runs, status, entry = submitted
    rows = [(r["stage"], r["seed"], r["state"]) for r in status["rows"]]
    logs = "\n".join(open(r["log"]).read()[-1500:] for r in status["rows"] if r["state"] != "COMPLETED")
    assert rows == [("data", None, "COMPLETED"), ("pretrain", 0, "COMPLETED"), ("pretrain", 1, "COMPLETED"),
                    ("incremental", 0, "COMPLETED"), ("incremental", 1, "COMPLETED"),
                    ("report", None, "COMPLETED")], logs
    pre = [job for job in entry["jobs"] if job["stage"] == "pretrain"][0]
    for seed in (0, 1):
        log = open(pre["log"].replace("%A", pre["job_id"]).replace("%a", str(seed))).read()
        assert "2 tasks on" in log  # each seed's pretraining ran as 2 srun ranks
        summary = read_json(runs / "demo" / f"seed{seed}" / "pretrain" / "pretrain.json")
        assert summary["world_size"] == 2
        assert read_json(runs / "demo" / f"seed{seed}" / "pretrain" / "stage.json")["seed"] == seed


def test_report_aggregates_the_seeds_as_mean_and_std(submitted):
    runs, _, _ = submitted
    results = read_json(runs / "demo" / "report" / "results.json")
    assert results["seeds"] == [0, 1] and set(results["methods"]) == {"nws", "finetune"}
    for method, doc in results["methods"].items():
        acc = doc["final_avg_acc"]
        assert acc["n"] == 2 and len(acc["values"]) == 2 and acc["std"] is not None, method
        assert acc["mean"] == pytest.approx(sum(acc["values"]) / 2)
        assert acc["std"] == pytest.approx(abs(acc["values"][0] - acc["values"][1]) / 2 ** 0.5)
        for seed, value in zip(results["method_seeds"][method], acc["values"], strict=True):
            metrics = read_json(runs / "demo" / f"seed{seed}" / "incremental" / method / "metrics.json")
            assert metrics["final_avg_acc"] == value
    md = (runs / "demo" / "report" / "results.md").read_text()
    assert "| nws | Mean |" in md and "| nws | STD |" in md


def test_jobs_logged_under_one_mlflow_parent_run(submitted):
    from mlflow.tracking import MlflowClient

    runs, status, _ = submitted
    parent_id = read_json(runs / "demo" / "pipeline.json")["parent_run_id"]
    assert status["parent_run_id"] == parent_id
    client = MlflowClient(status["tracking_uri"])
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["launcher"] == "slurm"  # ended by the report job
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    names = {(r.data.tags.get("stage"), r.data.tags.get("seed")) for r in children}
    assert {("data", None), ("pretrain", "0"), ("pretrain", "1")} <= names, names
    assert {r.data.tags.get("seed") for r in children if r.data.tags.get("stage") != "data"} >= {"0", "1"}
