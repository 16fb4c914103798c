"""A run made before the redesign of issue 18 still reads, rebuilds and evaluates as it did (tests/fixtures/old_run,
its README says what it holds and how it was made): every stored format, config hash and file name survived."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from base.config import config_hash, load_config
from base.layout import Layout
from incremental import loop
from incremental.evaluate import evaluate_stored
from incremental.loop import make_accelerator, run_hash, task_list
from incremental.methods import make_method
from pipeline import stages
from pipeline.config import experiment_schema
from pipeline.report import make_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "old_run"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Layout:
    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(FIXTURE, runs / "old_run")
    return Layout(runs, "old_run")


@pytest.fixture(scope="module")
def cfg(old_run):
    return load_config(experiment_schema(), old_run.config(0))


def record(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


def test_every_stage_key_and_output_digest_is_the_recorded_one(old_run, cfg):
    """The pipeline would skip every stage: the keys it computes today from the stored config are the ones it
    recorded then, and the outputs it lists today digest to the recorded bytes."""
    data = stages.data_stage(cfg, old_run, force=False, track=lambda *a: None)
    assert config_hash(data.key) == record(old_run.data)["key"]
    assert stages.output_hashes(data.outputs(), data.folder)[0] == record(old_run.data)["outputs"]
    upstream = record(old_run.data)["outputs"]
    pretrain = stages.pretrain_stage(cfg, 0, old_run, upstream, env={})
    assert config_hash(pretrain.key) == record(pretrain.folder)["key"]
    assert stages.output_hashes(pretrain.outputs(), pretrain.folder)[0] == record(pretrain.folder)["outputs"]
    incremental = stages.incremental_stage(cfg, 0, old_run, [upstream, record(pretrain.folder)["outputs"]], env={})
    assert config_hash(incremental.key) == record(incremental.folder)["key"]
    assert stages.output_hashes(incremental.outputs(), incremental.folder) == (
        record(incremental.folder)["outputs"], record(incremental.folder)["files"])


def test_every_method_keeps_its_run_hash(old_run, cfg):
    """The task loop keeps finished tasks only under the hash they were trained with (incremental.loop.run_hash)."""
    for name in cfg.incremental.methods:
        progress = json.loads((old_run.incremental(0) / name / "progress.json").read_text())
        assert run_hash(cfg, name) == progress["config_hash"], name


def test_every_stored_task_rebuilds_to_the_recorded_logits_and_accuracy(old_run, cfg):
    """Bit-identical logits of each rebuilt task model on its first 32 test images, and the accuracy matrix's last
    row measured again through the loop's own evaluation (checksums verified, model rebuilt from files)."""
    expected = load_file(str(FIXTURE / "logits.safetensors"))
    tasks = task_list(old_run.data, cfg.incremental.num_tasks)
    accelerator = make_accelerator(cfg.incremental)
    assert len(expected) == len(cfg.incremental.methods) * len(tasks) == 20
    for name in cfg.incremental.methods:
        method_dir = old_run.incremental(0) / name
        method = make_method(name, cfg, old_run.data, old_run.pretrain(0), method_dir, tasks)
        for t in range(len(tasks)):
            model = method.rebuild(t, method.ctx.task_dir(t)).eval()
            x, _ = next(iter(loop.test_loader(method, t, accelerator)))
            with torch.no_grad():
                assert torch.equal(model(x[:32]).float(), expected[f"{name}/task{t:02d}"]), (name, t)
        row = [evaluate_stored(method, t, loop.test_loader(method, t, accelerator), accelerator)
               for t in range(len(tasks))]
        assert row == json.loads((method_dir / "metrics.json").read_text())["acc_matrix"][-1], name


def test_the_report_is_the_recorded_one(old_run, tmp_path):
    make_report(old_run.root, tmp_path)
    for table in ("results.md", "results.csv", "results.tex"):
        assert (tmp_path / table).read_text() == (old_run.report / table).read_text(), table
