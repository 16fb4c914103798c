"""The task-family configs (issue 16: configs/permuted_fmnist.yaml, the 100-task run; permuted_fmnist_10.yaml and
rotated_fmnist.yaml, the 10-task tables of every method) through the whole pipeline on a tiny Fashion-MNIST in the
official IDX format, with only size overrides: the tasks are prepared as views of the stored images, every method of
the config learns them, and the report names each task by its permutation or angle."""

from __future__ import annotations

from pathlib import Path

import pytest

from nws.io import read_json
from pipeline.runner import run_pipeline
from tests.data_prep.fixtures import write_idx_fashion_mnist

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["seeds=[0]", "model.width=0.125", "model.pool_size=16", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2",
         "pretrain.batch_size=8", "pretrain.milestones=[]", "pretrain.checkpoint_every=0",
         "pretrain.eval_batch_size=16", "incremental.num_tasks=2", "incremental.steps=2", "incremental.batch_size=8",
         "incremental.milestones=[]"]
EVERY = {"nws", "finetune", "sequential", "supsup", "dst", "packnet", "piggyback", "ksm", "wsn", "hat"}


@pytest.mark.parametrize("name,transforms,methods,labels", [
    ("permuted_fmnist", [{"kind": "permute", "seed": s} for s in range(100)], {"nws", "supsup", "wsn"},
     ["perm 0", "perm 1"]),
    ("permuted_fmnist_10", [{"kind": "permute", "seed": s} for s in range(10)], EVERY, ["perm 0", "perm 1"]),
    ("rotated_fmnist", [{"kind": "rotate", "degrees": 36.0 * t} for t in range(10)], EVERY, ["rot 0°", "rot 36°"]),
])
def test_family_configs(tmp_path, name, transforms, methods, labels):
    root = write_idx_fashion_mnist(tmp_path, n_train=40, n_test=20)
    runs = tmp_path / "runs"
    summary = run_pipeline(CONFIGS / f"{name}.yaml", [f"data.root={root}", *SMALL], runs_dir=runs)
    assert {k: v["status"] for k, v in summary.items()} == {"data": "ran", "pretrain (seed 0)": "ran",
                                                            "incremental (seed 0)": "ran", "report": "ran"}
    data = runs / name / "data"
    tasks = read_json(data / "tasks.json")["tasks"]
    assert [t["transform"] for t in tasks] == transforms
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["pretrain"]  # the images, once
    results = read_json(runs / name / "report" / "results.json")
    assert set(results["methods"]) == methods
    assert all(results["methods"][m]["num_tasks"] == 2 for m in results["methods"])
    report = "\n".join(p.read_text() for p in (runs / name / "report").rglob("*.md"))
    assert all(label in report for label in labels)
