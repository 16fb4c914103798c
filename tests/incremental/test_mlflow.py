"""What a method's MLflow run holds (issue 19): one step per learned task with the whole accuracy row, the running
average, per-task forgetting, BWT, FWT and the cumulative memory, each equal to metrics.json; every step once, across a
run that first kept tasks of an untracked run and was then resumed with one more task; the provenance tags and the
data folder as a dataset input. A tiny real run: digits, NWS, 3 tasks of 2 steps."""

import json

import pytest
from mlflow.tracking import MlflowClient

from base.provenance import provenance
from base.tracking import PARENT_ENV, tracking_uri
from incremental.loop import run
from nws.io import sha256_file
from tests.incremental.fixtures import make_config


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def tracked(digits, pretrained, tmp_path_factory):
    """Task 0 untracked; tasks 0-1 tracked (task 0 kept, so its step comes from the stored row); then resumed with
    task 2 (the same MLflow run, steps 1 and 2 already there)."""
    root = tmp_path_factory.mktemp("tracked")
    runs, out = root / "runs", root / "o"
    settings = {"epochs": 1, "milestones": [], "max_steps_per_epoch": 2}
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv(PARENT_ENV, raising=False)
        run(make_config(num_tasks=1, track=False, **settings), digits, pretrained, out, methods=["nws"],
            runs_dir=runs)
        assert not (out / "nws" / "mlflow_run.json").exists()
        first = run(make_config(num_tasks=2, track=True, **settings), digits, pretrained, out, methods=["nws"],
                    runs_dir=runs)["nws"]
        doc = run(make_config(num_tasks=3, track=True, **settings), digits, pretrained, out, methods=["nws"],
                  runs_dir=runs)["nws"]
    assert doc["mlflow_run_id"] == first["mlflow_run_id"]
    return MlflowClient(tracking_uri(runs)), doc


def test_every_task_is_one_step_equal_to_metrics_json(tracked):
    client, doc = tracked
    rid, R, T = doc["mlflow_run_id"], doc["acc_matrix"], doc["num_tasks"]
    assert T == 3
    for j in range(T):
        assert history(client, rid, f"acc/task{j:02d}") == [(t + 1, R[t][j]) for t in range(j, T)]
    assert history(client, rid, "acc_new_task") == [(t + 1, R[t][t]) for t in range(T)]
    assert history(client, rid, "avg_acc") == [(t + 1, pytest.approx(sum(R[t][:t + 1]) / (t + 1)))
                                               for t in range(T)]
    for j in range(T - 1):  # forgetting of task j after task t: best earlier accuracy minus the current one
        expected = [(t + 1, pytest.approx(max(R[i][j] for i in range(j, t)) - R[t][j])) for t in range(j + 1, T)]
        assert history(client, rid, f"forgetting/task{j:02d}") == expected
        assert expected[-1][1] == doc["forgetting_per_task"][j]
    assert not client.get_metric_history(rid, f"forgetting/task{T - 1:02d}")
    assert history(client, rid, "forgetting")[-1] == (T, pytest.approx(doc["forgetting"]))
    assert history(client, rid, "bwt") == [
        (t + 1, pytest.approx(sum(R[t][i] - R[i][i] for i in range(t)) / t)) for t in range(1, T)]
    assert history(client, rid, "bwt")[-1][1] == pytest.approx(doc["bwt"])
    assert history(client, rid, "memory_bytes") == [(t + 1, b) for t, b in enumerate(doc["memory_bytes_cumulative"])]
    assert doc["memory_bytes_cumulative"][0] < doc["memory_bytes_cumulative"][-1]
    for key, value in doc["memory_coded_bytes"].items():  # the coded files' bytes, with the run's totals
        assert history(client, rid, f"memory_coded_bytes.{key}")[-1] == (T, value)
    # the totals once per finished run (2 tasks, then 3), no step twice anywhere
    assert history(client, rid, "final_avg_acc")[-1] == (T, pytest.approx(doc["final_avg_acc"]))
    for key in client.get_run(rid).data.metrics:
        steps = [m.step for m in client.get_metric_history(rid, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    f = doc["fwt_per_task"]  # forward transfer of every task learned after the first, measured before it trained
    assert None not in f and [h for _, h in history(client, rid, "fwt")] == pytest.approx([f[0], (f[0] + f[1]) / 2])
    assert history(client, rid, "fwt")[-1] == (T, pytest.approx(doc["fwt"]))
    for t in range(1, T):
        assert history(client, rid, f"fwt/task{t:02d}") == [(t + 1, pytest.approx(f[t - 1]))]


def test_tags_and_dataset_input(tracked, digits):
    client, doc = tracked
    found = client.get_run(doc["mlflow_run_id"])
    tags = found.data.tags
    assert {k: tags.get(k) for k in provenance()} == provenance()
    assert {"host", "command", "version.torch", "version.deepspeed"} <= set(tags)
    assert found.info.run_name == "incremental-nws"
    (data_input,) = found.inputs.dataset_inputs
    dataset = data_input.dataset
    assert dataset.name == "digits" and dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": str(digits.resolve())}
    assert dataset.digest == sha256_file(digits / "manifest.json")[:16]
    assert {t.key: t.value for t in data_input.tags} == {"mlflow.data.context": "tasks"}
