"""The report on real runs: two seeds of NWS and Finetune on digits (tests/pipeline/fixtures.py). results.json is
checked against the metrics.json files (mean and sample std computed here with numpy), results.md's rows against
the same numbers, every plot as a PNG, the MLflow logging, `nws report`, and the errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from incremental.stored import task_files
from nws.memory import MIB
from pipeline.cli import main as nws_main
from pipeline.report import make_report
from tests.conftest import THREADS
from tests.pipeline.fixtures import make_experiment

METHODS = ("nws", "finetune")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    torch.set_num_threads(THREADS)
    return make_experiment(tmp_path_factory.mktemp("experiment"), seeds=SEEDS, methods=METHODS)


@pytest.fixture(scope="module")
def reported(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report(experiment, out), out


def metrics(experiment, method):
    return [json.loads((experiment / f"seed{s}" / "incremental" / method / "metrics.json").read_text()) for s in SEEDS]


def expect(values, stat):
    x = np.array(values, dtype=float)
    assert stat["values"] == list(values) and stat["n"] == len(values)
    assert stat["mean"] == pytest.approx(x.mean()) and stat["std"] == pytest.approx(x.std(ddof=1))


def test_results_json_aggregates_every_metrics_json(experiment, reported):
    results, out = reported
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["benchmark"] == "digits" and results["experiment"] == "t"
    assert results["seeds"] == [0, 1] and results["tasks"] == ["task00", "task01"]
    assert list(results["methods"]) == list(METHODS)  # in the order of incremental.methods
    for method in METHODS:
        docs, agg = metrics(experiment, method), results["methods"][method]
        assert set(agg) == set(docs[0]) == set(docs[1])  # the keys of metrics.json
        for key in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "train_seconds", "eval_seconds"):
            expect([d[key] for d in docs], agg[key])
        for i in range(2):
            for j in range(2):
                if j > i:
                    assert agg["acc_matrix"][i][j] is None
                else:
                    expect([d["acc_matrix"][i][j] for d in docs], agg["acc_matrix"][i][j])
        for part in docs[0]["memory_bytes"]:
            expect([d["memory_bytes"][part] for d in docs], agg["memory_bytes"][part])
        for t in range(2):
            expect([d["memory_bytes_cumulative"][t] for d in docs], agg["memory_bytes_cumulative"][t])
        assert agg["method"] == method and agg["tasks"] == ["task00", "task01"]
        assert agg["config_hash"] == {"values": [d["config_hash"] for d in docs]}  # the seed is part of the hash
        assert docs[0]["config_hash"] != docs[1]["config_hash"]
    nws, docs = results["methods"]["nws"], metrics(experiment, "nws")
    assert set(nws["kur"]) == set(docs[0]["layers"])
    for layer in docs[0]["layers"]:
        for t in range(2):
            expect([d["kur"][layer][t] for d in docs], nws["kur"][layer][t])
            expect([d["layer_sparsity"][layer][t] for d in docs], nws["layer_sparsity"][layer][t])
    assert results["sources"]["nws"] == ["seed0/incremental/nws/metrics.json", "seed1/incremental/nws/metrics.json"]


def test_memory_against_the_number_of_tasks_is_measured_from_the_files(experiment):
    for method in METHODS:
        for s, doc in zip(SEEDS, metrics(experiment, method), strict=True):
            cumulative = doc["memory_bytes_cumulative"]
            second = experiment / f"seed{s}" / "incremental" / method / doc["task_dirs"][1]
            assert cumulative[1] == doc["memory_bytes"]["total"]
            assert cumulative[1] - cumulative[0] == sum(p.stat().st_size for p in task_files(second))


def cell(values, scale=1.0, digits=1):
    x = scale * np.array(values, dtype=float)
    return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}"


def test_results_md_is_the_papers_table(experiment, reported):
    results, out = reported
    lines = (out / "results.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Method | task00"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "task00", "task01", "Avg Acc (%)", "Forgetting (%)", "BWT (%)", "Memory (MiB)", "Train time (s)"]
    for method in METHODS:
        docs = metrics(experiment, method)
        row = next(line for line in lines if line.startswith(f"| {method} | ") and "±" in line)
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert cells == [cell([d["acc_matrix"][1][0] for d in docs], 100), cell([d["acc_matrix"][1][1] for d in docs],
                                                                                  100),
                         cell([d["final_avg_acc"] for d in docs], 100), cell([d["forgetting"] for d in docs], 100),
                         cell([d["bwt"] for d in docs], 100),
                         cell([d["memory_bytes"]["total"] for d in docs], 1 / MIB, 3),
                         cell([d["train_seconds"] for d in docs])]
        for s, doc in zip(SEEDS, docs, strict=True):  # the appendix tables' per-seed rows
            assert f"| {method} | {s} | {100 * doc['final_avg_acc']:.1f} | " \
                   f"{doc['memory_bytes']['total'] / MIB:.3f} |" in lines
        accs = 100 * np.array([d["final_avg_acc"] for d in docs])
        assert any(line.startswith(f"| {method} | STD | {accs.std(ddof=1):.2f} |") for line in lines)


def test_every_plot_is_a_png(reported):
    results, out = reported
    expected = {f"plots/{name}.png" for name in (
        "acc_matrix_nws", "acc_matrix_finetune", "task_accuracy", "memory_vs_tasks", "nws_kur", "nws_layer_sparsity",
        "nws_index_distribution_00", "nws_index_distribution_01")}
    assert set(results["plots"]) == expected  # Fig. 4 and appendix §6 plots for NWS only
    assert {f"plots/{p.name}" for p in (out / "plots").iterdir()} == expected
    for rel in expected:
        path = out / rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200
        assert f"]({rel})" in (out / "results.md").read_text()


def test_one_seed_and_one_method(experiment, tmp_path):
    """A method that was not run does not appear; a single seed's entry is its metrics.json as it is, with no ±
    in the table."""
    (tmp_path / "x" / "seed3" / "incremental").mkdir(parents=True)
    shutil.copy(experiment / "seed1" / "config.yaml", tmp_path / "x" / "seed3" / "config.yaml")
    shutil.copytree(experiment / "seed1" / "incremental" / "finetune", tmp_path / "x" / "seed3" / "incremental" /
                    "finetune")
    (tmp_path / "x" / "report" / "plots").mkdir(parents=True)
    (tmp_path / "x" / "report" / "plots" / "nws_kur.png").write_bytes(b"old")  # a figure of an earlier report
    results = make_report(tmp_path / "x")
    doc = metrics(experiment, "finetune")[1]
    assert list(results["methods"]) == ["finetune"] and results["seeds"] == [3]
    assert results["methods"]["finetune"] == doc
    assert not any("nws" in p for p in results["plots"])
    assert not (tmp_path / "x" / "report" / "plots" / "nws_kur.png").exists()
    row = next(line for line in (tmp_path / "x" / "report" / "results.md").read_text().splitlines()
               if line.startswith("| finetune | ") and "task" not in line)
    assert "±" not in row and f"| {100 * doc['final_avg_acc']:.1f} |" in row


def test_report_is_logged_to_an_mlflow_run(experiment, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import PARENT_ENV, start_run, tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(PARENT_ENV, raising=False)  # the run id comes from pipeline.json
    parent = start_run("t", "pipeline")
    (tmp_path / "x").mkdir()
    for s in SEEDS:
        shutil.copytree(experiment / f"seed{s}", tmp_path / "x" / f"seed{s}")
    (tmp_path / "x" / "pipeline.json").write_text(json.dumps({"parent_run_id": parent.run_id, "experiment": "t"}))
    assert nws_main(["report", "--dir", str(tmp_path / "x")]) == 0  # finds the parent run in pipeline.json
    results = json.loads((tmp_path / "x" / "report" / "results.json").read_text())
    client = MlflowClient(tracking_uri())
    logged = client.get_run(parent.run_id).data.metrics
    nws = results["methods"]["nws"]
    assert logged["report.nws.final_avg_acc"] == pytest.approx(nws["final_avg_acc"]["mean"])
    assert logged["report.nws.final_avg_acc_std"] == pytest.approx(nws["final_avg_acc"]["std"])
    assert logged["report.finetune.memory_mib"] == pytest.approx(
        results["methods"]["finetune"]["memory_bytes"]["total"]["mean"] / MIB)
    files = {a.path for a in client.list_artifacts(parent.run_id, "report")}
    assert {"report/results.json", "report/results.md", "report/plots"} <= files
    plots = {a.path for a in client.list_artifacts(parent.run_id, "report/plots")}
    assert plots == {f"report/{p}" for p in results["plots"]}
    assert client.get_run(parent.run_id).info.status == "RUNNING"  # the pipeline's run is not ended by the report


def test_nws_report_command(experiment, tmp_path, capsys):
    assert nws_main(["report", "--dir", str(experiment), "--out", str(tmp_path / "r"), "--no-track"]) == 0
    printed = capsys.readouterr().out
    assert "| Method | task00 | task01 |" in printed and str(tmp_path / "r" / "results.md") in printed
    assert (tmp_path / "r" / "results.json").is_file() and not (experiment / "report").exists()


def test_clear_errors(experiment, tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such experiment folder"):
        make_report(tmp_path / "missing")
    (tmp_path / "empty" / "seed0" / "pretrain").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nothing to report: no seed<S>/incremental/<method>/metrics.json"):
        make_report(tmp_path / "empty")
    assert nws_main(["report", "--dir", str(tmp_path / "empty"), "--no-track"]) == 2
    assert "nothing to report" in capsys.readouterr().err

    shutil.copytree(experiment / "seed0", tmp_path / "a" / "seed0")
    (tmp_path / "a" / "seed0" / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="seed0/config.yaml: file not found"):
        make_report(tmp_path / "a")

    shutil.copytree(experiment / "seed0", tmp_path / "b" / "seed0")
    path = tmp_path / "b" / "seed0" / "incremental" / "nws" / "metrics.json"
    doc = json.loads(path.read_text())
    del doc["acc_matrix"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"nws/metrics.json: not a metrics.json .*missing acc_matrix"):
        make_report(tmp_path / "b")
    path.write_text("{broken")
    with pytest.raises(ValueError, match="nws/metrics.json: not valid JSON"):
        make_report(tmp_path / "b")

    shutil.copytree(experiment / "seed0", tmp_path / "c" / "seed0")
    path = tmp_path / "c" / "seed0" / "incremental" / "finetune" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["tasks"] = ["task00", "other"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"nws/metrics.json: tasks .* differ from .*finetune/metrics.json: "
                                         r"\[.task00., .other.\]"):
        make_report(tmp_path / "c")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert nws_main(["report", "--dir", str(experiment), "--out", str(tmp_path / "r"), "--run-id", "0123abc"]) == 2
    assert "MLflow run 0123abc not found" in capsys.readouterr().err


def test_a_standalone_incremental_run_is_one_run_of_the_given_config(experiment, tmp_path):
    """`nws incremental` alone writes runs/<name>/incremental/ (no seed folders, no config.yaml): the report takes
    the experiment config from its caller (`nws report -c CONFIG`)."""
    import yaml

    shutil.copytree(experiment / "seed1" / "incremental" / "finetune", tmp_path / "x" / "incremental" / "finetune")
    with pytest.raises(FileNotFoundError, match="x/config.yaml: file not found"):
        make_report(tmp_path / "x")
    config = yaml.safe_load((experiment / "seed1" / "config.yaml").read_text())
    results = make_report(tmp_path / "x", config=config)
    assert results["seeds"] == [1] and list(results["methods"]) == ["finetune"]
    assert results["sources"] == {"finetune": ["incremental/finetune/metrics.json"]}


def test_task_inference_results_are_reported(experiment, tmp_path):
    """Task inference run on the stored NWS tasks of each seed (task_inference.json beside metrics.json) shows up
    in results.json, aggregated over the seeds, and as its own table."""
    from incremental.task_inference import evaluate_run
    from pipeline.config import experiment_schema, validate

    root = experiment.parent.parent
    found = []
    for s in SEEDS:
        folder = experiment / f"seed{s}"
        cfg = validate(experiment_schema(), yaml.safe_load((folder / "config.yaml").read_text()))
        found.append(evaluate_run(cfg, root / "data", root / "pretrain", folder / "incremental", ["nws"],
                                  batch_size=16)["nws"]["rules"]["min_entropy"])
    results = make_report(experiment, tmp_path / "report")
    got = results["task_inference"]["nws"]["min_entropy"]
    expect([f["inference_acc"] for f in found], got["inference_acc"])
    expect([f["acc_inferred"] for f in found], got["acc_inferred"])
    assert "finetune" not in results["task_inference"]
    text = (tmp_path / "report" / "results.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| nws | min_entropy | 16 |"))
    assert cell([f["inference_acc"] for f in found], 100) in row
    for s in SEEDS:  # leave the shared folders as the other tests saw them
        (experiment / f"seed{s}" / "incremental" / "nws" / "task_inference.json").unlink()
