"""configs/permuted_fmnist.yaml (issue 16) through the whole pipeline on a tiny Fashion-MNIST in the official IDX
format, with only size overrides: the permuted tasks are prepared as views of the stored images, every method of the
config learns them, and the report names each task by its permutation."""

from __future__ import annotations

from pathlib import Path

from nws.io import read_json
from pipeline.runner import run_pipeline
from tests.data_prep.fixtures import write_idx_fashion_mnist

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "permuted_fmnist.yaml"
SMALL = ["model.width=0.125", "model.pool_size=16", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2",
         "pretrain.batch_size=8", "pretrain.milestones=[]", "pretrain.checkpoint_every=0",
         "pretrain.eval_batch_size=16", "incremental.num_tasks=2", "incremental.epochs=1",
         "incremental.max_steps_per_epoch=2", "incremental.batch_size=8", "incremental.milestones=[]"]


def test_permuted_fmnist_config(tmp_path):
    root = write_idx_fashion_mnist(tmp_path, n_train=40, n_test=20)
    runs = tmp_path / "runs"
    summary = run_pipeline(CONFIG, [f"data.root={root}", *SMALL], runs_dir=runs)
    assert {k: v["status"] for k, v in summary.items()} == {"data": "ran", "pretrain (seed 0)": "ran",
                                                            "incremental (seed 0)": "ran", "report": "ran"}
    data = runs / "permuted_fmnist" / "data"
    tasks = read_json(data / "tasks.json")["tasks"]
    assert [t["transform"] for t in tasks] == [{"kind": "permute", "seed": s} for s in range(10)]
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["pretrain"]  # the images, once
    results = read_json(runs / "permuted_fmnist" / "report" / "results.json")
    assert set(results["methods"]) == {"nws", "finetune", "supsup"}
    assert all(results["methods"][m]["num_tasks"] == 2 for m in results["methods"])
    report = "\n".join(p.read_text() for p in (runs / "permuted_fmnist" / "report").rglob("*.md"))
    assert "perm 0" in report and "perm 1" in report
