"""The staged pipeline on real digits: every stage runs once per seed, a second call skips them all, a changed
setting reruns exactly the stages that read it, outputs altered on disk are redone, and MLflow gets one parent
run with a child per stage, seed and method."""

from __future__ import annotations

import os

import pytest
import yaml

from base.config import ConfigError
from nws.io import read_json
from pipeline.cli import main as nws
from pipeline.runner import run_pipeline

CONFIG = {
    "name": "tiny",
    "seeds": [0, 1],
    "data": {"source": "digits", "tasks": {"kind": "blocks", "classes_per_task": 2},
             "formats": ["wds"], "loader": "memory"},
    "model": {"arch": "resnet18", "stem": "cifar", "width": 0.125, "pool_size": 16},
    "pretrain": {"kind": "both", "epochs": 1, "batch_size": 64, "lr": 0.05, "milestones": [], "precision": "bf16",
                 "checkpoint_every": 100, "log_every": 10, "max_steps_per_epoch": 4},
    "incremental": {"methods": ["nws", "finetune"], "num_tasks": 2, "epochs": 1, "batch_size": 32, "lr": 0.05,
                    "milestones": [], "max_steps_per_epoch": 3, "augment": False},
}


def statuses(summary: dict) -> dict[str, str]:
    return {label: v["status"] for label, v in summary.items()}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One full run of the tiny experiment (2 seeds), into its own runs folder and MLflow store."""
    root = tmp_path_factory.mktemp("pipeline")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    runs = root / "runs"
    summary = run_pipeline(config, runs_dir=runs)
    return config, runs, summary


def test_every_stage_runs_once_per_seed_into_the_layout(pipeline_run):
    config, runs, summary = pipeline_run
    assert statuses(summary) == {"data": "ran", "pretrain (seed 0)": "ran", "incremental (seed 0)": "ran",
                                 "pretrain (seed 1)": "ran", "incremental (seed 1)": "ran", "report": "ran"}
    exp = runs / "tiny"
    assert (exp / "data" / "tasks.json").is_file()
    for seed in (0, 1):
        cfg = yaml.safe_load((exp / f"seed{seed}" / "config.yaml").read_text())
        assert cfg["seeds"] == [seed]
        assert (exp / f"seed{seed}" / "pretrain" / "pools.safetensors").is_file()
        for method in ("nws", "finetune"):
            metrics = read_json(exp / f"seed{seed}" / "incremental" / method / "metrics.json")
            assert metrics["num_tasks"] == 2 and 0.0 <= metrics["final_avg_acc"] <= 1.0
    results = read_json(exp / "report" / "results.json")
    assert results["seeds"] == [0, 1]
    assert set(results["methods"]) == {"nws", "finetune"}
    # nothing outside runs/<name>/ but the MLflow store and its artifacts
    assert sorted(p.name for p in runs.iterdir()) == sorted(["tiny", "mlflow.db", "mlflow.db.lock", "mlartifacts"])


def test_the_two_seeds_are_different_runs(pipeline_run):
    _, runs, _ = pipeline_run
    pools = [(runs / "tiny" / f"seed{s}" / "pretrain" / "pools.safetensors").read_bytes() for s in (0, 1)]
    assert pools[0] != pools[1]


def test_mlflow_has_one_parent_with_a_child_per_stage_seed_and_method(pipeline_run):
    from mlflow.tracking import MlflowClient

    _, runs, _ = pipeline_run
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    found = client.search_runs([exp.experiment_id])
    parent_id = read_json(runs / "tiny" / "pipeline.json")["parent_run_id"]
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [parent_id]
    children = sorted(r.info.run_name for r in found if r.data.tags.get("mlflow.parentRunId") == parent_id)
    expected = ["data"] + [f"{stage}-{kind} seed{s}" for s in (0, 1) for stage, kinds in
                           (("pretrain", ("nws", "plain")), ("incremental", ("nws", "finetune"))) for kind in kinds]
    assert children == sorted(expected)
    parent = client.get_run(parent_id)
    assert parent.data.params["incremental.epochs"] == "1"
    assert "seconds.incremental.seed1" in parent.data.metrics
    inc = next(r for r in found if r.info.run_name == "incremental-nws seed1")
    assert inc.data.tags["seed"] == "1" and "final_avg_acc" in inc.data.metrics
    assert {a.path for a in client.list_artifacts(parent_id)} == {"config.json", "report"}
    assert {"report/results.json", "report/results.md"} <= {a.path for a in client.list_artifacts(parent_id, "report")}
    assert "report.nws.final_avg_acc_std" in parent.data.metrics


def test_a_second_run_skips_every_stage(pipeline_run, capsys):
    config, runs, _ = pipeline_run
    assert nws(["pipeline", "run", "-c", str(config), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "0 stage(s) ran, 6 up to date" in out


def test_outputs_changed_on_disk_are_redone(pipeline_run):
    config, runs, _ = pipeline_run
    report = runs / "tiny" / "report" / "results.md"
    report.write_text("edited by hand")
    summary = run_pipeline(config, runs_dir=runs, only="report")
    assert statuses(summary) == {"report": "ran"}
    assert report.read_text().startswith("# ")


def test_stored_files_changed_after_the_run_are_noticed(pipeline_run, capfd):
    """Issue 17: a flipped byte in a stored indices.bin left the stage `up to date` and `nws report` published a
    hand-edited metrics.json. Now the stage is not up to date, its rerun stops on the loop's checksum check (exit 4
    of the stage, naming the file), a missing data shard is named, and the report refuses the edited file. Every
    file is put back afterwards and the run is up to date again."""
    from pipeline import stages as S
    from pipeline.runner import up_to_date

    config, runs, _ = pipeline_run
    exp = runs / "tiny"
    indices = exp / "seed1" / "incremental" / "nws" / "task01" / "indices.bin"
    original = indices.read_bytes()
    indices.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    args = ["run", "-c", str(config), "--runs-dir", str(runs), "--seed", "1", "--only", "incremental"]
    try:
        assert nws(["pipeline", *args]) == 1
    finally:
        indices.write_bytes(original)
    out = capfd.readouterr()
    # the coded copy is a hard link to the stored file (incremental/coded.py), so both names report the change
    assert ("incremental (seed 1): changed since it finished: nws/coded/task01/indices.bin changed; "
            "nws/task01/indices.bin changed") in out.out
    assert f"{indices}: checksum mismatch" in out.err
    assert nws(["pipeline", *args]) == 0 and "0 stage(s) ran, 1 up to date" in capfd.readouterr().out

    shard = exp / "data" / "task01" / "test-000000.tar"
    moved = shard.with_name("moved.tar")
    shard.rename(moved)
    try:
        cfg = yaml.safe_load(config.read_text())
        from base.layout import Layout
        from pipeline.config import experiment_schema

        stage = S.data_stage(experiment_schema().model_validate(cfg), Layout(runs, "tiny"), False, None)
        assert not up_to_date(stage)
        assert f"data: changed since it finished: {shard}: missing" in capfd.readouterr().out
    finally:
        moved.rename(shard)
    assert up_to_date(stage)

    metrics = exp / "seed0" / "incremental" / "finetune" / "metrics.json"
    kept = metrics.read_text()
    doc = read_json(metrics)
    metrics.write_text(kept.replace(f'"final_avg_acc": {doc["final_avg_acc"]}', '"final_avg_acc": 0.999'))
    try:
        assert metrics.read_text() != kept
        assert nws(["report", "--dir", str(exp), "--out", str(exp / "edited"), "--no-track"]) == 2
        err = capfd.readouterr().err
        assert f"{metrics}: changed since the incremental stage recorded it" in err
        assert not (exp / "edited" / "results.md").exists()
    finally:
        metrics.write_text(kept)


def test_one_writer_per_run_folder(pipeline_run, capfd):
    """Issue 17: two `nws pipeline run` of one config both trained in one folder. A whole run locks runs/<name>/
    and each stage its folder; another writer is refused with exit 7 naming the holder, and changes nothing."""
    from nws.lock import folder_lock

    config, runs, _ = pipeline_run
    exp = runs / "tiny"
    before = {p: p.read_bytes() for p in exp.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    with folder_lock(exp):
        assert nws(["pipeline", "run", "-c", str(config), "--runs-dir", str(runs)]) == 7
        assert f"error: {exp}: in use by pid {os.getpid()}" in capfd.readouterr().err
    with folder_lock(exp / "seed0" / "incremental"):
        args = ["run", "-c", str(config), "--runs-dir", str(runs), "--only", "incremental", "--seed", "0"]
        assert nws(["pipeline", *args]) == 7
        assert f"{exp / 'seed0' / 'incremental'}: in use by pid" in capfd.readouterr().err
        assert nws(["incremental", "-c", str(exp / "seed0" / "config.yaml"), "--data", str(exp / "data"),
                                 "--pretrain", str(exp / "seed0" / "pretrain"),
                                 "--out", str(exp / "seed0" / "incremental"), "--runs-dir", str(runs)]) == 7
    after = {p: p.read_bytes() for p in exp.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    assert after == before  # (seed0/config.yaml is rewritten with the same bytes before the stage lock is tried)


def test_bad_requests_name_what_is_wrong(pipeline_run, tmp_path, capsys):
    config, runs, _ = pipeline_run
    with pytest.raises(ConfigError, match="unknown stage 'train'"):
        run_pipeline(config, runs_dir=runs, only="train")
    with pytest.raises(ConfigError, match=r"--seed \[7\]"):
        run_pipeline(config, runs_dir=runs, seeds=[7])
    with pytest.raises(ConfigError, match="--only or --from"):
        run_pipeline(config, runs_dir=runs, only="data", start="pretrain")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**CONFIG, "incremental": {**CONFIG["incremental"], "epochz": 3}}))
    assert nws(["pipeline", "run", "-c", str(bad), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'incremental.epochz'" in err and "epochs" in err
    assert nws(["pipeline", "run", "-c", str(config), "--runs-dir", str(runs), "incremental.lr=-1"]) == 2
    assert "incremental.lr" in capsys.readouterr().err


def test_one_changed_setting_reruns_only_what_reads_it(pipeline_run):
    """Last in this module: it changes the run. Asked to replace the folder's config (issue 19: without --replace
    the run is refused, nothing overwritten), an NWS setting (beta) reruns the incremental stage of every seed and
    the report, and in that stage only NWS: Finetune's stored tasks are kept, as are data and pretrain."""
    from pipeline.layout import VariantConflict

    config, runs, _ = pipeline_run
    pools = runs / "tiny" / "seed0" / "pretrain" / "pools.safetensors"
    manifest = runs / "tiny" / "data" / "manifest.json"
    finetune_task = runs / "tiny" / "seed0" / "incremental" / "finetune" / "task00" / "network.safetensors"
    nws_metrics = runs / "tiny" / "seed0" / "incremental" / "nws" / "metrics.json"
    kept = pools.stat().st_mtime_ns, manifest.stat().st_mtime_ns, finetune_task.stat().st_mtime_ns
    replaced = read_json(nws_metrics)["config_hash"]
    with pytest.raises(VariantConflict, match="incremental.beta: 0.5 there, 0.25 here"):
        run_pipeline(config, ["incremental.beta=0.25"], seeds=[0], runs_dir=runs)
    assert read_json(nws_metrics)["config_hash"] == replaced
    summary = run_pipeline(config, ["incremental.beta=0.25"], runs_dir=runs, replace=True)
    assert statuses(summary) == {"data": "skipped", "pretrain (seed 0)": "skipped", "incremental (seed 0)": "ran",
                                 "pretrain (seed 1)": "skipped", "incremental (seed 1)": "ran", "report": "ran"}
    assert read_json(nws_metrics)["config_hash"] != replaced
    assert (pools.stat().st_mtime_ns, manifest.stat().st_mtime_ns, finetune_task.stat().st_mtime_ns) == kept
