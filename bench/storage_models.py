"""Trained full-width ResNet-18 NWS task models for the storage benchmark (issue 9), made on a small CPU.

No CIFAR here, so the tasks are CIFAR-shaped (32x32x3, 5 classes): Fashion-MNIST (28x28 grey) and scikit-learn
digits (8x8 grey), resized to 32x32 (bilinear) and replicated to 3 channels. Steps:
1. pretrain: a plain ResNet-18 (official `nws` stem, width 1.0) on all 10 Fashion-MNIST classes, briefly (SGD);
2. pools: 512 kernels per layer by k-means over that network's own kernels (nws.pools, `pool_init="kmeans"`) in
   place of the paper's pool distillation on ImageNet; the converted network is the base model (its indices are
   the nearest pool kernels of the pretrained weights), as the pretrain stage's base model, stored in `base/`
   (bench.storage codes task 0 against its indices, as the incremental stage does with its shared copy);
3. a chain of tasks as in the incremental stage (seed 004_ Algorithm 1): task t starts from task t-1 rebuilt
   from its indices (task 0 from the base model), gets a 5-way NWS head over the head pool, trains in search mode
   (CE + beta Σ Eq. 2, SGD momentum 0.9), and is stored with nws.artifact.save_task; its test accuracy is measured
   on the model rebuilt from the stored files.

    python -m bench.storage_models --out runs/storage_resnet18 [--pretrain-steps 300] [--task-steps 300]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import nws
from data_prep.sources import open_source
from incremental.methods._nws_net import swap_head
from nws.artifact import load_task, save_task
from nws.io import atomic_write_json, load_tensors, save_tensors

POOLS = "pools.safetensors"
BASE = "base"  # the base model's artifact: task 0 starts from it, and bench.storage codes task 0 against its indices
TASKS = (("fmnist_0-4", "fashion_mnist", range(0, 5)), ("fmnist_5-9", "fashion_mnist", range(5, 10)),
         ("digits_0-4", "digits", range(0, 5)), ("digits_5-9", "digits", range(5, 10)))


def images(source: str, split: str, classes=range(10), limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×3×32×32 float images normalised to mean 0 / std 1 over the set, labels 0..len(classes)-1)."""
    src = open_source(source)
    part = src.splits[split]
    keep = np.flatnonzero(np.isin(part.labels, list(classes)))[:limit]
    raw = np.stack([part.load(int(i)).image for i in keep])
    x = torch.from_numpy(raw).float().div(255)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)[:, :1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    y = torch.from_numpy(part.labels[keep]) - min(classes)
    return x, y


def train(model, x, y, steps: int, lr: float, beta: float, batch: int, seed: int) -> None:
    """SGD (momentum 0.9, weight decay 1e-5) on random batches; plus beta × Σ Eq. 2 terms for an NWS network."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-5)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[pick]), y[pick])
        if beta:
            loss = loss + beta * nws.search_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model, x, y, batch: int = 500) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def fresh(pools: dict[str, torch.Tensor], num_classes: int) -> torch.nn.Module:
    """The NWS ResNet-18 skeleton with the stored pools (as incremental.methods._nws_net.build)."""
    net = nws.convert(nws.models.resnet18(num_classes, stem="nws", width=1.0), pool_size=512)
    return nws.load_pools(net, pools)


def make(out: Path, pretrain_steps: int, task_steps: int, beta: float, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    log = {"pretrain_steps": pretrain_steps, "task_steps": task_steps, "beta": beta, "tasks": []}
    start = time.perf_counter()
    plain = nws.models.resnet18(10, stem="nws", width=1.0)
    x, y = images("fashion_mnist", "train")
    train(plain, x, y, pretrain_steps, lr=0.05, beta=0.0, batch=64, seed=seed)
    xt, yt = images("fashion_mnist", "test")
    log["pretrain_acc"] = accuracy(plain, xt, yt)
    base = nws.convert(plain, pool_size=512, pool_init="kmeans", seed=seed)
    pools = nws.export_pools(base)
    save_tensors(out / POOLS, pools)
    save_task(out / BASE, nws.set_mode(base, "frozen"), codec_mode="packed", meta={"num_classes": 10})
    log["base_acc"] = accuracy(nws.materialize(base), xt, yt)
    print(f"pretrained {log['pretrain_acc']:.3f}, base (k-means pools) {log['base_acc']:.3f}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    prev_dir, prev_classes = out / BASE, 10
    for t, (name, source, classes) in enumerate(TASKS):
        net = fresh(pools, prev_classes)
        load_task(prev_dir, net)
        swap_head(net, len(classes), "nws", pools["fc"])
        nws.set_mode(net, "search")
        x, y = images(source, "train", classes)
        train(net, x, y, task_steps, lr=0.01, beta=beta, batch=32, seed=seed + t + 1)
        folder = out / f"task{t:02d}_{name}"
        save_task(folder, nws.set_mode(net, "frozen"), codec_mode="packed", meta={"num_classes": len(classes)})
        rebuilt = fresh(pools, 10)
        swap_head(rebuilt, len(classes), "nws", pools["fc"])
        load_task(folder, rebuilt)
        xt, yt = images(source, "test", classes)
        acc = accuracy(nws.materialize(nws.set_mode(rebuilt, "frozen")), xt, yt)
        log["tasks"].append({"name": name, "folder": folder.name, "test_acc": acc})
        print(f"task {t} {name}: test accuracy {acc:.3f} (rebuilt from {folder}), "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        prev_dir, prev_classes = folder, len(classes)
    log["seconds"] = time.perf_counter() - start
    atomic_write_json(out / "chain.json", log)
    return log


def load_chain(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(chain.json, pools) of a folder made by `make`."""
    return json.loads((folder / "chain.json").read_text()), load_tensors(folder / POOLS)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/storage_resnet18"))
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--task-steps", type=int, default=300)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    make(a.out, a.pretrain_steps, a.task_steps, a.beta, a.seed)


if __name__ == "__main__":
    main()
