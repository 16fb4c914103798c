"""Each method run's own figures in its MLflow child run (issue 19, pipeline.run_plots): two seeds of NWS and
Finetune, tracked, under a parent run; the report logs its figures (over both seeds) to the parent and each seed's
figures, drawn from that seed's metrics.json alone, to that seed's child run."""

import json

import pytest
from mlflow.tracking import MlflowClient

from base.tracking import PARENT_ENV, start_run, tracking_uri
from pipeline.report import make_report
from tests.pipeline.fixtures import make_experiment

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_parent(monkeypatch):
    monkeypatch.delenv(PARENT_ENV, raising=False)


def test_every_method_run_gets_its_own_figures(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    parent = start_run("t", "pipeline", runs_dir=runs)
    monkeypatch.setenv(PARENT_ENV, parent.run_id)
    experiment = make_experiment(tmp_path, seeds=(0, 1), track=True, runs_dir=runs)
    results = make_report(experiment, tracker=parent)
    client = MlflowClient(tracking_uri(runs))
    every = {"task_accuracy.png", "memory_vs_tasks.png", "accuracy_vs_memory.png", "avg_accuracy_vs_tasks.png"}
    own = {"nws": {*every, "acc_matrix_nws.png", "nws_kur.png", "nws_layer_sparsity.png",
                   "nws_index_distribution_00.png", "nws_index_distribution_01.png"},
           "finetune": {*every, "acc_matrix_finetune.png"}}
    children = set()
    for method, names in own.items():
        for seed in (0, 1):
            folder = experiment / f"seed{seed}" / "incremental" / method
            run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]
            children.add(run_id)
            assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.run_id
            logged = {a.path for a in client.list_artifacts(run_id, "plots")}
            assert logged == {f"plots/{n}" for n in names}, (method, seed)
            figure = client.download_artifacts(run_id, f"plots/acc_matrix_{method}.png", str(tmp_path / run_id))
            with open(figure, "rb") as f:
                data = f.read()
            assert data[:8] == PNG
            # the seed's own matrix, not the report's mean ± std over both seeds
            assert data != (experiment / "report" / "plots" / f"acc_matrix_{method}.png").read_bytes()
    assert len(children) == 4
    assert {f"report/{p}" for p in results["plots"]} == {
        a.path for a in client.list_artifacts(parent.run_id, "report/plots")}


def test_runs_without_tracking_are_left_out(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    parent = start_run("t", "pipeline", runs_dir=runs)
    experiment = make_experiment(tmp_path, seeds=(0,), methods=("finetune",), track=False, runs_dir=runs)
    assert not (experiment / "seed0" / "incremental" / "finetune" / "mlflow_run.json").exists()
    make_report(experiment, tracker=parent)
    client = MlflowClient(tracking_uri(runs))
    (only,) = client.search_runs([client.get_run(parent.run_id).info.experiment_id])
    assert only.info.run_id == parent.run_id
    assert client.list_artifacts(parent.run_id, "report/plots")
