"""Tiny real inputs for the incremental tests: digits prepared by the data stage (5 tasks of 2 classes) and pretrain
outputs in the pretrain stage's formats, made quickly: a narrow plain ResNet-18 trained for a few steps on the
`pretrain` unit (plain_backbone.safetensors), then converted to NWS with pools drawn by k-means from its own
kernels (pools.safetensors + base_model/)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import nws
from base.config import validate
from data_prep.prepare import prepare
from data_prep.run import prepare_section
from loaders import make_loader
from pipeline.config import experiment_schema
from pretrain import outputs
from tests.conftest import SEED

MODEL = {"arch": "resnet18", "stem": "cifar", "width": 0.125, "pool_size": 32}
DATA = {"source": "digits", "tasks": {"kind": "blocks", "classes_per_task": 2}, "formats": ["wds"],
        "loader": "memory"}
# LeNet-300-100 over the 8x8 digits: the fully connected network (no convolution, no BatchNorm)
LENET = {"arch": "lenet300", "input_size": 8, "pool_size": 32}


def make_config(**incremental):
    inc = {"epochs": 2, "batch_size": 32, "lr": 0.05, "milestones": [1], "track": False, "augment": False,
           **incremental}
    return validate(experiment_schema(), {"name": "t", "seeds": [SEED], "data": DATA, "model": MODEL,
                                          "incremental": inc})


def permuted_digits(out: Path, count: int, steps: int, supsup: dict):
    """`count` permuted digits tasks on LeNet-300-100 (every task all 10 classes, its own pixel permutation): the
    validated config (`steps` a task, SupSup's options `supsup`) and the data folder the data stage prepares."""
    data = {"source": "digits", "tasks": {"kind": "permuted", "count": count}, "formats": ["wds"], "loader": "memory"}
    inc = {"steps": steps, "epochs": None, "batch_size": 64, "lr": 0.05, "milestones": [0.75], "track": False,
           "augment": False, "options": {"supsup": supsup}}
    cfg = validate(experiment_schema(), {"name": "t", "seeds": [SEED], "data": data, "model": LENET,
                                         "incremental": inc})
    prepare_section(cfg.data, out, progress=False)
    return cfg, out


def prepare_digits(out: Path) -> Path:
    prepare("digits", None, out, ("wds",), "blocks", {"classes_per_task": 2}, progress=False)
    return out


def make_pretrain(data_dir: Path, out: Path, cfg, steps: int = 30) -> Path:
    """Plain backbone trained `steps` SGD steps on all 10 classes, and its NWS twin (k-means pools)."""
    torch.manual_seed(SEED)
    net = cfg.model.build(10)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    done = 0
    while done < steps:
        for x, y in make_loader(data_dir / "pretrain", "train", "memory", batch_size=64, train=True, epoch=done):
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
            done += 1
            if done == steps:
                break
    net.eval()
    meta = outputs.model_metadata(cfg.model, "test", 10)
    outputs.write_plain(out, net, meta)
    snet = nws.convert(net, pool_size=cfg.model.pool_size, pool_init="kmeans", seed=SEED)
    nws.export_indices(snet)
    outputs.write_nws(out, snet, meta)
    return out
