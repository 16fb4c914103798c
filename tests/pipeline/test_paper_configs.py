"""The paper's configs, smoke-tested end to end on tiny fixtures in the official on-disk formats (the real data is
not on this machine): ImageNet pool pretraining, then Split-CIFAR-100 and CUB-to-Sketches reusing its outputs, each
through the pipeline with the shipped config and only size overrides (narrow network, few steps, tiny images)."""

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
         "incremental.batch_size=4", "incremental.milestones=[]", "incremental.num_workers=0",
         "incremental.methods=[nws,finetune]"]


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
    assert {k: v["status"] for k, v in summary.items()} == {"data": "ran", "pretrain (seed 1993)": "ran",
                                                            "incremental (seed 1993)": "ran", "report": "ran"}
    name = config.removesuffix(".yaml")
    assert len(read_json(runs / name / "data" / "tasks.json")["tasks"]) == tasks
    assert not (runs / name / "seed1993" / "pretrain" / "pools.safetensors").exists()  # reused, not retrained
    results = read_json(runs / name / "report" / "results.json")
    assert set(results["methods"]) == {"nws", "finetune"}
    assert results["methods"]["nws"]["num_tasks"] == 2  # one seed: its metrics.json as it is
