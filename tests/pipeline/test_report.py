"""The report on real runs: two seeds of NWS and Finetune on digits (tests/pipeline/fixtures.py). results.json is
checked against the metrics.json files (mean and sample std computed here with numpy), results.md's rows against
the same numbers, every plot as a PNG, the MLflow logging, `nws report`, and the errors."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import incremental.methods as methods_module
from base.config import resolved
from data_prep.sources import open_source
from data_prep.tasks import load_tasks, split_tasks
from incremental.chance import LEGEND, NO_SIZES, binomial_p
from incremental.loop import run
from incremental.stored import task_files
from nws.memory import MIB
from pipeline import headline
from pipeline.cli import main as nws_main
from pipeline.report import make_report
from pipeline.task_labels import label, task_labels
from tests import margin
from tests.conftest import THREADS
from tests.incremental.fixtures import make_config
from tests.incremental.test_loop import Sabotaged
from tests.pipeline.fixtures import make_experiment

METHODS = ("nws", "finetune")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    torch.set_num_threads(THREADS)
    return make_experiment(tmp_path_factory.mktemp("experiment"), seeds=SEEDS, methods=METHODS)


@pytest.fixture(scope="module")
def reported(experiment, tmp_path_factory):
    """The report with the tasks.json of the prepared digits (the pipeline's runs/<name>/data)."""
    out = tmp_path_factory.mktemp("report")
    return make_report(experiment, out, data_dir=experiment.parent.parent / "data"), out


def class_labels(experiment):
    """The classes of the first two tasks, as the prepared data's tasks.json lists them."""
    tasks, _ = load_tasks(experiment.parent.parent / "data" / "tasks.json")
    return [",".join(t.class_names) for t in tasks[:2]]


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
    text = (out / "results.md").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method | "))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", *class_labels(experiment), "Avg Acc (%)",
                                                                 "Forgetting (%)", "BWT (%)", "FWT (%)",
                                                                 "Memory (MiB)", "Coded memory (MiB)",
                                                                 "Train time (s)"]
    for table in (i for i, line in enumerate(lines) if line.startswith("| Method | ")):  # each table's rule row
        assert lines[table + 1].count("|") == lines[table].count("|"), lines[table:table + 2]
    assert "Neural Weight Search for Scalable Task Incremental Learning" in text and "seed 004_" not in text
    for method in METHODS:
        docs = metrics(experiment, method)
        row = next(line for line in lines if line.startswith(f"| {method} | ") and "±" in line)
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        # a task cell is marked * when the accuracy of some seed is not significantly above chance (p >= 0.01;
        # these runs train 3 steps, so some are)
        at_chance = [any(binomial_p(round(d["acc_matrix"][1][t] * d["test_samples"][t]), d["test_samples"][t], 2)
                         >= 0.01 for d in docs) for t in range(2)]
        assert cells == [cell([d["acc_matrix"][1][t] for d in docs], 100) + ("*" if at_chance[t] else "")
                         for t in range(2)] + [
                         cell([d["final_avg_acc"] for d in docs], 100), cell([d["forgetting"] for d in docs], 100),
                         cell([d["bwt"] for d in docs], 100), cell([d["fwt"] for d in docs], 100),
                         cell([d["memory_bytes"]["total"] for d in docs], 1 / MIB, 3),
                         cell([d["memory_coded_bytes"]["total"] for d in docs], 1 / MIB, 3),
                         cell([d["train_seconds"] for d in docs])]
        for s, doc in zip(SEEDS, docs, strict=True):  # the appendix tables' per-seed rows
            assert f"| {method} | {s} | {100 * doc['final_avg_acc']:.1f} | " \
                   f"{doc['memory_bytes']['total'] / MIB:.3f} | {doc['memory_coded_bytes']['total'] / MIB:.3f} |" \
                   in lines
        accs = 100 * np.array([d["final_avg_acc"] for d in docs])
        assert any(line.startswith(f"| {method} | STD | {accs.std(ddof=1):.2f} |") for line in lines)


def test_every_plot_is_a_png(reported):
    results, out = reported
    expected = {f"plots/{name}.png" for name in (
        "acc_matrix_nws", "acc_matrix_finetune", "task_accuracy", "memory_vs_tasks", "accuracy_vs_memory",
        "avg_accuracy_vs_tasks", "nws_kur", "nws_layer_sparsity", "nws_index_distribution_00",
        "nws_index_distribution_01")}
    assert set(results["plots"]) == expected  # Fig. 4 and appendix §6 plots for NWS only
    assert {f"plots/{p.name}" for p in (out / "plots").iterdir()} == expected
    for rel in expected:
        path = out / rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200
        assert f"]({rel})" in (out / "results.md").read_text()


def test_csv_and_tex_hold_the_rows_of_results_json(experiment, reported):
    """results.csv parsed back gives results.json's numbers (accuracies in %, memory in MiB, mean and std columns);
    results.tex is a booktabs tabular with one row per method, its cells those of results.md."""
    _, out = reported
    results = json.loads((out / "results.json").read_text())
    labels = class_labels(experiment)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == list(METHODS)
    for row in rows:
        doc = results["methods"][row["method"]]
        expected = {f"acc {name} (%)": acc for name, acc in zip(labels, doc["acc_matrix"][-1], strict=True)}
        expected |= {"avg acc (%)": doc["final_avg_acc"], "forgetting (%)": doc["forgetting"], "BWT (%)": doc["bwt"],
                     "FWT (%)": doc["fwt"]}
        assert row["seeds"] == "0 1" and len(row) == 2 + 2 * (len(expected) + 2)
        for column, value in expected.items():
            name, unit = column.rsplit(" ", 1)
            assert float(row[f"{name} mean {unit}"]) == pytest.approx(100 * value["mean"], rel=1e-12)
            assert float(row[f"{name} std {unit}"]) == pytest.approx(100 * value["std"], rel=1e-12)
        memory = doc["memory_bytes"]["total"]
        assert float(row["memory mean (MiB)"]) == pytest.approx(memory["mean"] / MIB, rel=1e-12)
        assert float(row["memory std (MiB)"]) == pytest.approx(memory["std"] / MIB, rel=1e-12)
        coded = doc["memory_coded_bytes"]["total"]
        assert float(row["memory coded mean (MiB)"]) == pytest.approx(coded["mean"] / MIB, rel=1e-12)

    tex = (out / "results.tex").read_text().splitlines()
    assert "\\usepackage{booktabs}" in tex[0] and tex[1] == "\\begin{tabular}{l" + "r" * 8 + "}"
    assert tex[-2:] == ["\\bottomrule", "\\end{tabular}"]
    head = tex[tex.index("\\toprule") + 1].removesuffix(" \\\\").split(" & ")
    assert head == ["Method", *labels, r"Avg Acc (\%)", r"Forgetting (\%)", r"BWT (\%)", r"FWT (\%)",
                    "Memory (MiB)", "Coded (MiB)"]
    body = tex[tex.index("\\midrule") + 1: tex.index("\\bottomrule")]
    assert [line.split(" & ")[0] for line in body] == list(METHODS)  # one row per method
    for line, method in zip(body, METHODS, strict=True):
        cells, docs = line.removesuffix(" \\\\").split(" & ")[1:], metrics(experiment, method)
        expected = [cell([d["acc_matrix"][1][t] for d in docs], 100) for t in range(2)] + [
            cell([d[key] for d in docs], 100) for key in ("final_avg_acc", "forgetting", "bwt", "fwt")] + [
            cell([d["memory_bytes"]["total"] for d in docs], 1 / MIB, 3),
            cell([d["memory_coded_bytes"]["total"] for d in docs], 1 / MIB, 3)]
        assert [c.rstrip("*") for c in cells[:2]] + cells[2:] == [e.replace("±", "$\\pm$") for e in expected]


def test_the_headline_figures_show_the_seeds_numbers(experiment, reported):
    """accuracy_vs_memory.png and avg_accuracy_vs_tasks.png are drawn from pipeline.headline: one point per method
    at (mean memory, mean final average accuracy) ± the std over seeds, and after each task the average accuracy
    over the tasks learned so far, averaged over seeds."""
    results, _ = reported
    points = headline.memory_accuracy(results["methods"])
    curves = headline.avg_accuracy_curves(results["methods"])
    assert list(points) == list(curves) == list(METHODS)
    for method in METHODS:
        docs = metrics(experiment, method)
        memory = np.array([d["memory_bytes"]["total"] for d in docs]) / MIB
        acc = np.array([d["final_avg_acc"] for d in docs])
        p = points[method]
        assert (p.memory_mib, p.memory_std) == pytest.approx((memory.mean(), memory.std(ddof=1)))
        assert (p.accuracy, p.accuracy_std) == pytest.approx((acc.mean(), acc.std(ddof=1)))
        coded = np.array([d["memory_coded_bytes"]["total"] for d in docs]) / MIB
        assert p.coded_mib == pytest.approx(coded.mean()) and p.coded_mib <= p.memory_mib
        so_far = np.array([[np.mean(d["acc_matrix"][t][: t + 1]) for t in range(2)] for d in docs])  # seeds x tasks
        mean, spread = curves[method]
        assert mean == pytest.approx(so_far.mean(axis=0)) and spread == pytest.approx(so_far.std(axis=0, ddof=1))
        assert mean[-1] == pytest.approx(p.accuracy)  # after the last task: the final average accuracy


def test_tasks_are_labelled_by_their_classes(experiment, reported, tmp_path):
    """Generated task names give way to the classes of tasks.json in the tables and figures; a task named by its
    source keeps its name; without tasks.json the names stay; an unreadable one is an error naming it."""
    results, out = reported
    assert results["tasks"] == ["task00", "task01"] and results["task_labels"] == class_labels(experiment)
    digits = open_source("digits")
    assert [label(t) for t in split_tasks(digits, "blocks", classes_per_task=5)] == [
        "0,1,2,... (5 classes)", "5,6,7,... (5 classes)"]
    named = split_tasks(digits, "explicit", explicit=[{"name": "low", "classes": ["0", "1"]}, ["2", "3"]])
    assert [label(t) for t in named] == ["low", "2,3"]
    assert task_labels(["task00", "task01"], tmp_path / "tasks.json") == ["task00", "task01"]
    (tmp_path / "tasks.json").write_text("{broken")
    with pytest.raises(ValueError, match="tasks.json"):
        task_labels(["task00"], tmp_path / "tasks.json")


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
    rows = list(csv.DictReader((tmp_path / "x" / "report" / "results.csv").open()))
    assert [(r["method"], r["seeds"], r["avg acc std (%)"]) for r in rows] == [("finetune", "3", "")]
    assert float(rows[0]["avg acc mean (%)"]) == pytest.approx(100 * doc["final_avg_acc"])
    point = headline.memory_accuracy(results["methods"])["finetune"]
    assert (point.accuracy, point.accuracy_std, point.memory_std) == (doc["final_avg_acc"], None, None)
    mean, spread = headline.avg_accuracy_curves(results["methods"])["finetune"]
    assert mean == pytest.approx(doc["avg_acc_per_step"]) and spread == [None, None]


def test_a_metrics_json_without_fwt_shows_a_dash(experiment, tmp_path):
    """A run stored before FWT was measured has no fwt in its metrics.json: its FWT cells are "–" (results.md),
    empty (results.csv) and "--" (results.tex), and the other columns are as before."""
    folder = tmp_path / "x" / "seed1" / "incremental" / "finetune"
    shutil.copytree(experiment / "seed1" / "incremental" / "finetune", folder)
    shutil.copy(experiment / "seed1" / "config.yaml", tmp_path / "x" / "seed1" / "config.yaml")
    doc = json.loads((folder / "metrics.json").read_text())
    for key in ("fwt", "fwt_per_task", "acc_before_learning", "acc_random_init"):
        del doc[key]
    (folder / "metrics.json").write_text(json.dumps(doc))
    make_report(tmp_path / "x")
    out = tmp_path / "x" / "report"
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| finetune | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-4:] == ["–", f"{doc['memory_bytes']['total'] / MIB:.3f}",
                          f"{doc['memory_coded_bytes']['total'] / MIB:.3f}", f"{doc['train_seconds']:.1f}"]
    assert cells[-5] == f"{100 * doc['bwt']:.1f}"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[0]["FWT mean (%)"] == "" and float(rows[0]["BWT mean (%)"]) == pytest.approx(100 * doc["bwt"])
    tex = (out / "results.tex").read_text().splitlines()
    assert tex[tex.index("\\midrule") + 1].removesuffix(" \\\\").split(" & ")[-3] == "--"


def test_a_metrics_json_from_before_coded_memory_is_reported_with_a_dash(experiment, tmp_path):
    """A run made before incremental.coded (no memory_coded_* keys) keeps its report: "–" in results.md, empty in
    results.csv, "--" in results.tex, and no coded point in the accuracy-memory plane."""
    folder = tmp_path / "x" / "seed3" / "incremental" / "finetune"
    folder.parent.mkdir(parents=True)
    shutil.copy(experiment / "seed1" / "config.yaml", tmp_path / "x" / "seed3" / "config.yaml")
    shutil.copytree(experiment / "seed1" / "incremental" / "finetune", folder)
    doc = json.loads((folder / "metrics.json").read_text())
    old = {k: v for k, v in doc.items() if not k.startswith("memory_coded")}
    assert len(old) == len(doc) - 3
    (folder / "metrics.json").write_text(json.dumps(old))
    results = make_report(tmp_path / "x")
    report = tmp_path / "x" / "report"
    row = next(line for line in (report / "results.md").read_text().splitlines()
               if line.startswith("| finetune | ") and "task" not in line)
    assert f"| {old['memory_bytes']['total'] / MIB:.3f} | – |" in row
    assert list(csv.DictReader((report / "results.csv").open()))[0]["memory coded mean (MiB)"] == ""
    assert (report / "results.tex").read_text().splitlines()[5].endswith(" & -- \\\\")
    assert headline.memory_accuracy(results["methods"])["finetune"].coded_mib is None


def test_report_is_logged_to_an_mlflow_run(experiment, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from base.tracking import PARENT_ENV, start_run, tracking_uri
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
    assert logged["report.nws.fwt"] == pytest.approx(nws["fwt"]["mean"])
    assert logged["report.finetune.memory_mib"] == pytest.approx(
        results["methods"]["finetune"]["memory_bytes"]["total"]["mean"] / MIB)
    assert logged["report.finetune.memory_coded_mib"] == pytest.approx(
        results["methods"]["finetune"]["memory_coded_bytes"]["total"]["mean"] / MIB)
    files = {a.path for a in client.list_artifacts(parent.run_id, "report")}
    assert {"report/results.json", "report/results.md", "report/plots"} <= files
    plots = {a.path for a in client.list_artifacts(parent.run_id, "report/plots")}
    assert plots == {f"report/{p}" for p in results["plots"]}
    assert client.get_run(parent.run_id).info.status == "RUNNING"  # the pipeline's run is not ended by the report
    assert client.get_run(parent.run_id).data.tags["chance_tasks"] == ",".join(
        f"{c['method']}/seed{c['seed']}/{c['task']}" for c in results["chance"]["flagged"])


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
    from base.config import validate
    from incremental.task_inference import evaluate_run
    from pipeline.config import experiment_schema

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


@pytest.fixture(scope="module")
def chance_experiment(experiment, tmp_path_factory):
    """Finetune on the same data and pretrain outputs, two seeds: seed 0 trained well above chance (2 epochs, no
    augmentation: 96-100% per task), seed 1 the Sabotaged Finetune of test_loop (its stored head predicts one class:
    chance on two balanced classes)."""
    root, out = experiment.parent.parent, tmp_path_factory.mktemp("chance") / "t"
    base = make_config(num_tasks=2, epochs=2, milestones=[1], augment=False, methods=["finetune"])
    real_get = methods_module.get_method
    for seed in SEEDS:
        cfg = base.model_copy(update={"seeds": [seed]})
        with pytest.MonkeyPatch.context() as mp:
            if seed == 1:
                mp.setattr(methods_module, "get_method", lambda n: Sabotaged if n == "finetune" else real_get(n))
            run(cfg, root / "data", root / "pretrain", out / f"seed{seed}" / "incremental")
        (out / f"seed{seed}" / "config.yaml").write_text(yaml.safe_dump(resolved(cfg), sort_keys=False))
    return out


def test_a_method_at_chance_is_flagged_in_the_report(chance_experiment, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from base.tracking import PARENT_ENV, start_run, tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(PARENT_ENV, raising=False)
    parent = start_run("t", "pipeline")
    (chance_experiment / "pipeline.json").write_text(json.dumps({"parent_run_id": parent.run_id}))
    assert nws_main(["report", "--dir", str(chance_experiment), "--out", str(tmp_path / "r"), "--strict"]) == 6
    captured = capsys.readouterr()
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    sabotaged = json.loads((chance_experiment / "seed1" / "incremental" / "finetune" / "metrics.json").read_text())
    flagged = results["chance"]["flagged"]
    assert [(c["method"], c["seed"], c["task"]) for c in flagged] == [("finetune", 1, "task00"),
                                                                       ("finetune", 1, "task01")]  # not seed 0
    assert results["chance"]["not_tested"] == [] and results["chance"]["alpha"] == 0.01
    for c, acc, n in zip(flagged, sabotaged["acc_matrix"][-1], sabotaged["test_samples"], strict=True):
        assert (c["accuracy"], c["n"], c["classes"], c["chance"]) == (acc, n, 2, 0.5)
        assert c["p_value"] == pytest.approx(binomial_p(round(acc * n), n, 2)) and c["p_value"] >= 0.01
        assert f"WARNING: finetune seed1 {c['task']}: {100 * acc:.1f}% on {n} test images is not above chance " \
               f"(50.0%, binomial p={c['p_value']:.2g})" in captured.err
        assert f"| finetune | 1 | {c['task']} | {100 * acc:.1f} | {n} | 2 | 50.0 | {c['p_value']:.2g} |" \
            in captured.out  # results.md's list of the flagged cells, printed
    assert "--strict exits with 6" in captured.err
    row = next(line for line in (tmp_path / "r" / "results.md").read_text().splitlines()
               if line.startswith("| finetune | ") and "±" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("*") and cells[2].endswith("*") and not cells[3].endswith("*")  # tasks, not Avg
    tags = MlflowClient(tracking_uri()).get_run(parent.run_id).data.tags
    assert tags["chance_tasks"] == "finetune/seed1/task00,finetune/seed1/task01"
    # without --strict: the same report, exit 0
    assert nws_main(["report", "--dir", str(chance_experiment), "--out", str(tmp_path / "r"), "--no-track"]) == 0
    assert "WARNING: finetune seed1 task00" in capsys.readouterr().err


def test_a_healthy_run_is_not_flagged(chance_experiment, tmp_path, capsys):
    shutil.copytree(chance_experiment / "seed0", tmp_path / "x" / "seed0")
    assert nws_main(["report", "--dir", str(tmp_path / "x"), "--no-track", "--strict"]) == 0
    captured = capsys.readouterr()
    results = json.loads((tmp_path / "x" / "report" / "results.json").read_text())
    assert results["chance"]["flagged"] == [] and results["chance"]["not_tested"] == []
    assert "WARNING" not in captured.err and "*" not in (tmp_path / "x" / "report" / "results.md").read_text()
    for acc in results["methods"]["finetune"]["acc_matrix"][-1]:  # the test passes from 47/72 = 65.3% on
        margin.above("healthy finetune task accuracy", acc, 0.66)


def test_an_old_metrics_json_without_test_sizes_is_reported_as_not_tested(chance_experiment, tmp_path, capsys):
    shutil.copytree(chance_experiment / "seed1", tmp_path / "x" / "seed1")
    path = tmp_path / "x" / "seed1" / "incremental" / "finetune" / "metrics.json"
    doc = json.loads(path.read_text())
    for key in ("test_samples", "task_classes", "chance"):  # as written before these fields existed
        del doc[key]
    path.write_text(json.dumps(doc))
    assert nws_main(["report", "--dir", str(tmp_path / "x"), "--no-track", "--strict"]) == 0
    results = json.loads((tmp_path / "x" / "report" / "results.json").read_text())
    assert results["chance"] == {**results["chance"], "flagged": [],
                                 "not_tested": [{"method": "finetune", "seed": 1, "reason": NO_SIZES}]}
    assert f"Chance test not possible for finetune (seed 1): {NO_SIZES}." in \
        (tmp_path / "x" / "report" / "results.md").read_text()
    assert "WARNING: finetune seed1: chance test not possible" in capsys.readouterr().err


def test_nws_pipeline_run_marks_and_fails_with_strict(chance_experiment, tmp_path, monkeypatch, capsys):
    """The end of `nws pipeline run` (`make demo`): the results table with the marks and the legend, the WARNING
    lines, and --strict's exit code; from the report, or from the incremental stage's metrics.json when the
    report stage was not selected. The stages themselves are those of a real run (the report of the
    chance experiment), so run_pipeline is replaced by the summary it returns."""
    import pipeline.runner

    make_report(chance_experiment, tmp_path / "report")
    summaries = {"report": {"report": {"status": "ran", "folder": str(tmp_path / "report")}},
                 "incremental": {"incremental (seed 1)": {"status": "skipped",
                                                          "folder": str(chance_experiment / "seed1" / "incremental")}}}
    for kind, summary in summaries.items():
        monkeypatch.setattr(pipeline.runner, "run_pipeline", lambda *a, summary=summary, **k: summary)
        args = ["pipeline", "run", "-c", "unused.yaml", "--runs-dir", str(tmp_path)]
        assert nws_main(args + ["--strict"]) == 6, kind
        captured = capsys.readouterr()
        for task in ("task00", "task01"):
            assert f"WARNING: finetune seed1 {task}: " in captured.err
        assert nws_main(args) == 0
        if kind == "report":  # the table: seed 1 at chance marks both task cells of the mean ± std row
            row = next(line for line in captured.out.splitlines() if line.startswith("| finetune |"))
            assert row.count("* |") == 2 and LEGEND in captured.out
