"""The paper's configs, smoke-tested end to end on tiny fixtures in the official on-disk formats (the real data is
not on this machine): ImageNet pool pretraining, then Split-CIFAR-100 and CUB-to-Sketches reusing its outputs, each
through the pipeline with the shipped config and only size overrides (narrow network, few steps, tiny images): every
method and seed the config lists, with its recipes and PackNet's App. 5 settings (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nws.io import read_json
from pipeline.runner import run_pipeline
from tests.data_prep.fixtures import write_cifar100_tarball, write_cub2sketches, write_imagenet_tree

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the network of every run below: pools and backbone made by the first must fit the others
SMALL = ["model.width=0.125", "model.pool_size=16", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2",
         "pretrain.batch_size=8", "pretrain.num_workers=0", "pretrain.milestones=[]", "data.image_size=32",
         "pretrain.checkpoint_every=0", "pretrain.eval_batch_size=16"]
TASKS = ["incremental.num_tasks=2", "incremental.epochs=1", "incremental.max_steps_per_epoch=2",
         "incremental.batch_size=4", "incremental.milestones=[]", "incremental.num_workers=0"]
METHODS = {"nws", "finetune", "sequential", "packnet", "ksm", "piggyback", "supsup", "dst"}
SEEDS = [1993, 1994, 1995]
# §5.4's shared SGD where the paper's recipe trains; the mask methods' own Adam (their masks do not learn under SGD)
RECIPES = {"nws": "paper", "finetune": "paper", "sequential": "paper", "packnet": "paper", "ksm": "official",
           "piggyback": "official", "supsup": "official", "dst": "official"}


@pytest.fixture(scope="module")
def imagenet_pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    imagenet = write_imagenet_tree(root, per_class=3)
    runs = root / "runs"
    summary = run_pipeline(CONFIGS / "imagenet_pools_resnet18.yaml", [f"data.root={imagenet}", *SMALL],
                           runs_dir=runs)
    return root, runs, summary


def test_imagenet_pool_pretraining_config(imagenet_pools):
    _, runs, summary = imagenet_pools
    assert {k: v["status"] for k, v in summary.items()} == {"data": "ran", "pretrain (seed 0)": "ran"}
    out = runs / "imagenet_pools_resnet18" / "seed0" / "pretrain"
    done = read_json(out / "pretrain.json")
    assert done["nws"]["precision"] == "bf16" and done["nws"]["global_batch"] == 8
    assert (out / "pools.safetensors").is_file() and (out / "plain_backbone.safetensors").is_file()
    # the data stage wrote both formats the config names, and the pretraining read FFCV
    assert list((runs / "imagenet_pools_resnet18" / "data" / "pretrain").glob("*.beton"))


@pytest.mark.parametrize("config,fixture,tasks", [
    ("split_cifar100_resnet18.yaml", lambda root: write_cifar100_tarball(root), 20),
    ("cub2sketches_resnet18.yaml", lambda root: write_cub2sketches(root), 5),
])
def test_benchmark_configs_reuse_the_imagenet_pools(imagenet_pools, config, fixture, tasks):
    root, runs, _ = imagenet_pools
    data = fixture(root / config.split("_")[0])
    pools = runs / "imagenet_pools_resnet18" / "seed0" / "pretrain"
    summary = run_pipeline(CONFIGS / config, [f"data.root={data}", f"pretrain.reuse={pools}", *SMALL, *TASKS],
                           runs_dir=runs)
    assert {k: v["status"] for k, v in summary.items()} == {
        "data": "ran", **{f"{stage} (seed {s})": "ran" for s in SEEDS for stage in ("pretrain", "incremental")},
        "report": "ran"}
    name = config.removesuffix(".yaml")
    assert len(read_json(runs / name / "data" / "tasks.json")["tasks"]) == tasks
    for s in SEEDS:
        assert not (runs / name / f"seed{s}" / "pretrain" / "pools.safetensors").exists()  # reused, not retrained
        packnet = read_json(runs / name / f"seed{s}" / "incremental" / "packnet" / "metrics.json")
        # App. 5: 60% pruned after the budget (here 1 epoch), then 30 epochs of retraining
        assert packnet["prune_perc"] == 0.6 and packnet["train_epochs_per_task"] == [1, 1]
        assert [(d["epochs"], d["extra_epochs"]) for d in packnet["schedule_per_task"]] == [(31, 30)] * 2
    incremental = runs / name / f"seed{SEEDS[0]}" / "incremental"
    assert {m: read_json(incremental / m / "metrics.json")["recipe"] for m in METHODS} == RECIPES
    results = read_json(runs / name / "report" / "results.json")
    assert set(results["methods"]) == METHODS
    assert results["method_seeds"] == {m: SEEDS for m in results["methods"]}
