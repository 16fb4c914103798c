"""Task inference: the task id is not given at test time (SupSup scenario GNu; seed 002_ §3.3, notes/algorithms.md
§2.2), evaluated on the stored task models only.

For one batch of a task's test split (all T stored tasks learned), a rule names the task the batch belongs to:
- `one_shot_gradient` (SupSup's one-shot, official adaptors.se_oneshot_entropy_minimization): the network computes
  with the superposition Σ_i alpha_i M_i of every stored mask, alpha_i = 1/T; H = mean output entropy; the task is
  argmin_i ∂H/∂alpha_i. Needs a method that can superpose its stored tasks (`method.superposition` not None, SupSup).
- `min_entropy` (the same idea for any method, e.g. NWS): every task's model is rebuilt from its artifact
  (`method.rebuild`) and the batch goes to the task whose model gives the lowest mean output entropy.
- `min_entropy_batch_bn` (networks with BatchNorm): the same, each model's BatchNorm on the batch's statistics
  instead of its task's running ones, as SupSup's adaptor runs the network (a batch holds one task's images). On
  Fashion-MNIST 5×2 it names the task of 97.5% of SupSup's batches where `min_entropy` names 70% and the one-shot
  gradient 20% (chance): the entropy at each task's own masks separates the tasks, the first-order step from the
  centre of the simplex (alpha = 1/T) does not (BENCHMARKS.md, scripts/supsup_inference_probe.py).
The batch is then classified by the rebuilt model of the inferred task. A batch whose task is inferred wrongly
counts as wrong (its labels belong to another task; the official `unshared_labels`). Batches are one task's test
batch at a time, 128 by default (official --test-batch-size). The entropy is the mean over the whole batch by
default; `samples=1` is the official GNu setting (`data_to_repeat` 1: the first sample's entropy only, the batch
still shapes the BatchNorm statistics of the superposition).
Output: `<method_dir>/task_inference.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from base.layout import TASK_INFERENCE
from incremental.methods import Method, make_method
from incremental.stored import verify_shared, verify_task
from loaders import make_loader
from nws.io import atomic_write_json

SPLITS = ("test", "val")
RULES = {
    "one_shot_gradient": "SupSup one-shot: alpha_i = 1/T over the superposed stored masks, task = argmin_i dH/dalpha_i "
                         "(H = mean softmax entropy); BatchNorm on batch statistics",
    "min_entropy": "task whose rebuilt model gives the lowest mean softmax entropy on the batch",
    "min_entropy_batch_bn": "task whose rebuilt model, BatchNorm on the batch's statistics, gives the lowest mean "
                            "softmax entropy on the batch",
}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy of each row, in fp32."""
    logp = logits.float().log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def one_shot_gradient(superposed, num_tasks: int, x: torch.Tensor, samples: int | None) -> int:
    """argmin_i ∂H/∂alpha_i at alpha = 1/T (official se_oneshot_minimization)."""
    alphas = torch.full((num_tasks,), 1.0 / num_tasks, device=x.device, requires_grad=True)
    h = entropy(superposed(alphas, x)[:samples]).mean()
    (grad,) = torch.autograd.grad(h, alphas)
    return int(grad.argmin())


def min_entropy(outputs: list[torch.Tensor], samples: int | None) -> int:
    return int(torch.stack([entropy(o[:samples]).mean() for o in outputs]).argmin())


def test_batches(method: Method, j: int, batch_size: int):
    cfg, unit = method.ctx.cfg, method.ctx.data_dir / method.ctx.tasks[j].name
    for split in SPLITS:
        try:
            return make_loader(unit, split, fmt=cfg.data.loader, batch_size=batch_size, train=False,
                               image_size=cfg.data.image_size, rank=0, world_size=1, num_workers=0)
        except KeyError:
            continue
    raise KeyError(f"{unit}: no evaluation split ({' or '.join(SPLITS)})")


def rebuilt_models(method: Method, num_tasks: int, device) -> list[nn.Module]:
    """Every task model rebuilt from its stored, checksum-verified artifact."""
    verify_shared(method.ctx.method_dir)
    models = []
    for j in range(num_tasks):
        folder = method.ctx.task_dir(j)
        verify_task(folder)
        models.append(method.rebuild(j, folder, verified=True).eval().to(device))
    return models


@torch.no_grad()
def _outputs(models: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    return [m(x) for m in models]


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def batch_stat_outputs(models: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Each model's logits with its BatchNorm layers on the batch's statistics; their running statistics stay as
    stored (momentum 0 while in train mode, the batch counter put back), so every other rule still sees the stored
    models."""
    out = []
    for model in models:
        layers = batchnorms(model)
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
        for m in layers:
            m.momentum = 0.0
            m.train()
        try:
            out.append(model(x))
        finally:
            for m, (momentum, count) in zip(layers, saved, strict=True):
                m.momentum = momentum
                m.num_batches_tracked.copy_(count)
                m.eval()
    return out


def evaluate(method: Method, batch_size: int = 128, samples: int | None = None, device="cpu") -> dict:
    """Task-inference accuracy (batches whose task is named right) and accuracy with the inferred vs the given
    task id, per rule and per task; written to `<method_dir>/task_inference.json`."""
    T = len(method.ctx.tasks)
    models = rebuilt_models(method, T, device)
    rules = ["min_entropy"] + (["min_entropy_batch_bn"] if any(batchnorms(m) for m in models) else [])
    superposed = method.superposition(list(range(T)))
    if superposed is not None:
        rules.insert(0, "one_shot_gradient")
    counts = {r: [{"batches": 0, "right_batches": 0, "inferred": [0] * T, "correct": 0} for _ in range(T)]
              for r in rules}
    given = [{"samples": 0, "correct": 0} for _ in range(T)]
    for j in range(T):
        for x, y in test_batches(method, j, batch_size):
            x, y = x.to(device), y.to(device)
            outputs = _outputs(models, x)
            right = [int((o.argmax(1) == y).sum()) for o in outputs]
            given[j]["samples"] += y.numel()
            given[j]["correct"] += right[j]
            batch_bn = batch_stat_outputs(models, x) if "min_entropy_batch_bn" in rules else None
            for r in rules:
                guess = (one_shot_gradient(superposed, T, x, samples) if r == "one_shot_gradient"
                         else min_entropy(batch_bn, samples) if r == "min_entropy_batch_bn"
                         else min_entropy(outputs, samples))
                c = counts[r][j]
                c["batches"] += 1
                c["inferred"][guess] += 1
                if guess == j:
                    c["right_batches"] += 1
                    c["correct"] += right[j]
    acc_given = [g["correct"] / g["samples"] for g in given]
    result = {"method": method.name, "num_tasks": T, "tasks": [t.name for t in method.ctx.tasks],
              "batch_size": batch_size, "entropy_samples": samples or "batch",
              "wrong_task": "a batch whose task is inferred wrongly counts as wrong (official unshared_labels)",
              "acc_given": sum(acc_given) / T, "rules": {}}
    for r in rules:
        per_task = []
        for j, c in enumerate(counts[r]):
            per_task.append({"task": method.ctx.tasks[j].name, "batches": c["batches"],
                             "inference_acc": c["right_batches"] / c["batches"], "inferred_counts": c["inferred"],
                             "acc_inferred": c["correct"] / given[j]["samples"], "acc_given": acc_given[j]})
        batches = sum(c["batches"] for c in counts[r])
        result["rules"][r] = {"rule": RULES[r],
                              "inference_acc": sum(c["right_batches"] for c in counts[r]) / batches,
                              "acc_inferred": sum(p["acc_inferred"] for p in per_task) / T,
                              "acc_given": result["acc_given"], "per_task": per_task}
    atomic_write_json(method.ctx.method_dir / TASK_INFERENCE, result)
    return result


def evaluate_run(cfg, data_dir: Path, pretrain_dir: Path, out_dir: Path, methods: list[str], batch_size: int = 128,
                 samples: int | None = None) -> dict[str, dict]:
    """Task inference for the finished runs of `methods` under `out_dir` (their stored tasks only)."""
    from incremental.loop import task_list

    device = "cuda" if torch.cuda.is_available() and not cfg.incremental.cpu else "cpu"
    tasks = task_list(Path(data_dir), cfg.incremental.num_tasks)
    results = {}
    for name in methods:
        method = make_method(name, cfg, Path(data_dir), Path(pretrain_dir), Path(out_dir) / name, tasks)
        results[name] = evaluate(method, batch_size=batch_size, samples=samples, device=device)
    return results
