"""base.tracking: runs in a temporary SQLite store, child runs, rank-0-only logging, resumed runs."""

import pytest

from base.tracking import PARENT_ENV, NullRun, flatten, start_run, tracking_uri


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    return tmp_path / "runs"


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None",
                                                                       "e": "{}"}


def test_default_store_is_sqlite_in_runs_dir(store, monkeypatch):
    assert tracking_uri(store) == f"sqlite:///{store.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri(store) == "sqlite:////elsewhere/x.db"


def test_child_run_params_metrics_artifacts(store, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    parent = start_run("exp", "pipeline", runs_dir=store)
    monkeypatch.setenv(PARENT_ENV, parent.run_id)
    child = start_run("exp", "pretrain-nws", runs_dir=store, tags={"stage": "pretrain"})
    child.log_params({"pretrain": {"lr": 0.01, "milestones": [100]}, "name": "demo"})
    for step in range(3):
        child.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
    (tmp_path / "summary.json").write_text('{"ok": 1}')
    child.log_artifact(tmp_path / "summary.json")
    child.log_dict({"a": 1}, "config.json")
    child.end()
    client = MlflowClient(tracking_uri(store))
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["stage"] == "pretrain"
    assert run.data.params == {"pretrain.lr": "0.01", "pretrain.milestones": "[100]", "name": "demo"}
    assert [(m.step, m.value) for m in client.get_metric_history(child.run_id, "loss")] == [(0, 1.0), (1, 0.5),
                                                                                             (2, 1 / 3)]
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(child.run_id)} == {"summary.json", "config.json"}
    assert (store / "mlflow.db").is_file()


def test_resume_continues_the_same_run(store):
    from mlflow.tracking import MlflowClient

    first = start_run("exp", "pretrain", runs_dir=store)
    first.log_metrics({"loss": 2.0}, step=1)
    first.end("FAILED")
    again = start_run("exp", "pretrain", runs_dir=store, resume_run_id=first.run_id)
    assert again.run_id == first.run_id
    again.log_metrics({"loss": 1.0}, step=2)
    again.end()
    client = MlflowClient(tracking_uri(store))
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [1, 2]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_disabled_rank_logs_nothing(store):
    run = start_run("exp", "pretrain", runs_dir=store, enabled=False)
    assert isinstance(run, NullRun) and run.run_id is None
    with run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_params({"a": 1})
    assert not (store / "mlflow.db").exists()


def test_artifacts_of_a_named_sqlite_store_stay_next_to_it(tmp_path, monkeypatch):
    """With MLFLOW_TRACKING_URI naming a SQLite file, artifacts go beside that file, not to ./mlruns of the cwd."""
    monkeypatch.delenv(PARENT_ENV, raising=False)
    store = tmp_path / "shared"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    store.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = start_run("exp", "stage", runs_dir=tmp_path / "unused")
    (tmp_path / "a.json").write_text("{}")
    run.log_artifact(tmp_path / "a.json")
    run.end()
    assert list((store / "mlartifacts").rglob("a.json"))
    assert not (cwd / "mlruns").exists()
