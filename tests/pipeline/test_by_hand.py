"""Issue 19: the stage commands run by hand and `nws pipeline run` share one layout (pipeline.layout), in any order,
and a run of another config neither overwrites a folder's runs nor is averaged with them.

One runs folder through the module, in order: the stages by hand (data, pretrain, incremental, report), then the
pipeline over their outputs, then the stages by hand over the pipeline's; then the variant rule."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from nws.io import read_json
from pipeline.cli import main as nws
from pipeline.layout import VariantConflict
from pipeline.runner import run_pipeline
from tests.pipeline.test_runner import CONFIG as RUNNER_CONFIG
from tests.pipeline.test_runner import statuses
from tests.pretrain.conftest import ROOT, cli_env

# test_runner's tiny experiment, NWS only and untracked
CONFIG = {**RUNNER_CONFIG, "pretrain": {**RUNNER_CONFIG["pretrain"], "kind": "nws"},
          "incremental": {**RUNNER_CONFIG["incremental"], "methods": ["nws"], "track": False}}


def stamps(folder) -> dict:
    """{file: (mtime, bytes)} of every file under `folder` but the lock records (.lock*, rewritten by every writer):
    what a stage that kept its work leaves as it was."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def pretrain_by_hand(runs, config, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline pretrain -c CONFIG --runs-dir RUNS` as a user types it (its own process: it forms a
    process group), the MLflow store in the runs folder."""
    return subprocess.run([sys.executable, "-m", "pipeline", "pretrain", "-c", str(config), "--runs-dir", str(runs),
                           *args], cwd=ROOT, env=cli_env(runs), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    """The four stage commands by hand, each with its defaults only (-c and --runs-dir), in the pipeline's order."""
    root = tmp_path_factory.mktemp("by_hand")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    runs = root / "runs"
    assert nws(["data", "prepare", "-c", str(config), "--runs-dir", str(runs), "--quiet"]) == 0
    proc = pretrain_by_hand(runs, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert nws(["incremental", "-c", str(config), "--runs-dir", str(runs), "--method", "nws"]) == 0
    assert nws(["report", "--dir", str(runs / "tiny"), "--no-track"]) == 0
    return config, runs


def test_stage_commands_default_to_the_pipeline_layout(by_hand):
    """Each command found the previous one's outputs where the pipeline keeps them (the incremental stage read
    seed0/pretrain, not runs/tiny/pretrain), and wrote the seed's config.yaml the report reads."""
    _, runs = by_hand
    exp = runs / "tiny"
    assert (exp / "data" / "tasks.json").is_file()
    assert yaml.safe_load((exp / "seed0" / "config.yaml").read_text())["seeds"] == [0]
    assert (exp / "seed0" / "pretrain" / "complete").is_file()
    metrics = read_json(exp / "seed0" / "incremental" / "nws" / "metrics.json")
    assert metrics["tasks"] == ["task00", "task01"]
    results = read_json(exp / "report" / "results.json")
    assert results["seeds"] == [0] and list(results["methods"]) == ["nws"]
    assert sorted(p.name for p in exp.iterdir()) == ["data", "report", "seed0"]
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["mlartifacts", "tiny"]
    # the pretraining run is named and tagged with its seed, as the pipeline's stage runs are
    from mlflow.tracking import MlflowClient

    run = MlflowClient(cli_env(runs)["MLFLOW_TRACKING_URI"]).get_run(
        read_json(exp / "seed0" / "pretrain" / "summary_nws.json")["mlflow_run_id"])
    assert run.data.tags["seed"] == "0" and run.info.run_name.endswith(" seed0"), run.info.run_name


def test_the_pipeline_records_the_by_hand_stages_and_keeps_their_work(by_hand, capfd):
    """The pipeline over the by-hand outputs says why it runs each stage, trains nothing again (the pools and the
    stored tasks keep their bytes and times), records them, and a second call finds everything up to date."""
    config, runs = by_hand
    exp = runs / "tiny"
    before = stamps(exp / "seed0" / "pretrain") | stamps(exp / "seed0" / "incremental" / "nws" / "task00")
    summary = run_pipeline(config, seeds=[0], runs_dir=runs)
    out = capfd.readouterr().out
    for label in ("data", "pretrain (seed 0)", "incremental (seed 0)"):
        assert f"[pipeline] {label}: outputs without a stage record (made outside the pipeline)" in out
    assert "task 0 (task00) stored and evaluated by an earlier run, kept" in out
    after = stamps(exp / "seed0" / "pretrain") | stamps(exp / "seed0" / "incremental" / "nws" / "task00")
    assert {p: after[p] for p in before} == before
    again = run_pipeline(config, seeds=[0], runs_dir=runs)
    assert set(statuses(summary).values()) == {"ran"} and set(statuses(again).values()) == {"skipped"}


def test_stage_commands_after_the_pipeline_use_its_outputs(by_hand, capfd):
    """The other order: `nws incremental --method nws` after the pipeline (the issue's `runs/demo/pretrain/
    pools.safetensors: file not found`) finds its pools and keeps its tasks, `nws report -c` reports it, and the
    pipeline still finds every stage up to date."""
    config, runs = by_hand
    assert nws(["incremental", "-c", str(config), "--runs-dir", str(runs), "--method", "nws"]) == 0
    assert "task 1 (task01) stored and evaluated by an earlier run, kept" in capfd.readouterr().out
    assert nws(["report", "-c", str(config), "--runs-dir", str(runs), "--no-track"]) == 0
    assert set(statuses(run_pipeline(config, seeds=[0], runs_dir=runs)).values()) == {"skipped"}


def test_another_config_is_refused_not_overwritten(by_hand, capfd):
    """Issue 19's scenario: `run_pipeline(cfg, ["incremental.epochs=2"])` on a finished run overwrote it. Now it is
    refused before any stage runs, naming the key and the two ways on; so is the same override by hand, and a data
    section other than the folder's; nothing in the folder changes."""
    config, runs = by_hand
    exp = runs / "tiny"
    before = stamps(exp)
    with pytest.raises(VariantConflict, match=r"seed0/config.yaml holds a run of another config \(incremental.epochs: "
                                              r"1 there, 2 here\).*--variant NAME.*--replace"):
        run_pipeline(config, ["incremental.epochs=2"], runs_dir=runs)
    assert nws(["incremental", "-c", str(config), "--runs-dir", str(runs), "incremental.epochs=2"]) == 2
    assert "incremental.epochs: 1 there, 2 here" in capfd.readouterr().err
    assert nws(["data", "prepare", "-c", str(config), "--runs-dir", str(runs), "data.per_class.train=20"]) == 2
    assert "data.per_class.train: None there, 20 here" in capfd.readouterr().err
    assert stamps(exp) == before


def test_a_variant_is_kept_apart_and_tagged(by_hand):
    """--variant runs the other config in runs/<name>/variants/<variant>/, whose MLflow runs carry the variant; the
    folder's own run is left as it was."""
    from mlflow.tracking import MlflowClient

    config, runs = by_hand
    exp = runs / "tiny"
    before = stamps(exp / "seed0")
    summary = run_pipeline(config, ["incremental.epochs=2"], seeds=[0], runs_dir=runs, variant="ep2")
    assert set(statuses(summary).values()) == {"ran"}
    variant = exp / "variants" / "ep2"
    assert all(v["folder"].startswith(str(variant)) for v in summary.values())
    assert read_json(variant / "seed0" / "incremental" / "nws" / "metrics.json")["epochs"] == 2
    assert read_json(exp / "seed0" / "incremental" / "nws" / "metrics.json")["epochs"] == 1
    assert stamps(exp / "seed0") == before
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    parent_id = read_json(variant / "pipeline.json")["parent_run_id"]
    assert client.get_run(parent_id).data.tags["variant"] == "ep2"
    children = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_id}'")
    assert children and {r.data.tags.get("variant") for r in children} == {"ep2"}


def test_the_report_does_not_average_two_configs(by_hand, capfd):
    """Issue 19: `nws report` averaged a seed trained 6 epochs with one trained 2. Seed 1 by hand with another
    epochs is refused; with --replace it runs, and the report then refuses the folder, naming the key."""
    config, runs = by_hand
    exp = runs / "tiny"
    seed1 = ["-c", str(config), "--runs-dir", str(runs), "--seed", "1", "--pretrain", str(exp / "seed0" / "pretrain"),
             "incremental.epochs=2"]
    assert nws(["incremental", *seed1]) == 2
    assert "seed0/config.yaml holds a run of another config (incremental.epochs: 1 there, 2 here)" \
        in capfd.readouterr().err
    assert not (exp / "seed1").exists()
    assert nws(["incremental", *seed1, "--replace"]) == 0
    assert read_json(exp / "seed1" / "incremental" / "nws" / "metrics.json")["epochs"] == 2
    report = stamps(exp / "report")
    assert nws(["report", "--dir", str(exp), "--no-track"]) == 2
    err = capfd.readouterr().err
    assert "are runs of different configs (incremental.epochs: 1 in seed0, 2 in seed1)" in err
    assert "not averaged" in err and stamps(exp / "report") == report


def test_every_make_target_honours_runs():
    """`make -n`: the stage targets and the pipeline's share CONFIG and the runs folder RUNS (make data wrote
    runs/data/<source> and ignored RUNS)."""
    targets = ("data", "pretrain", "incremental", "report", "pipeline", "demo", "ui", "submit")
    # Under `make test` the outer make's MAKELEVEL/MAKEFLAGS make this one print "Entering directory" lines; STAMP= and
    # NATIVE= leave out the set-up prerequisites (the venv, the search kernel's build), which print lines of their own.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", *targets, "RUNS=/elsewhere/runs",
                           "CONFIG=configs/fmnist.yaml", "STAMP=", "NATIVE="], cwd=ROOT, capture_output=True, text=True,
                          check=True, env=env)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(targets)
    for target, line in zip(targets, lines, strict=True):
        assert "--runs-dir /elsewhere/runs" in line, (target, line)
        if target not in ("demo", "ui"):
            assert "-c configs/fmnist.yaml" in line, (target, line)
