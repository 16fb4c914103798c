"""Why SupSup's one-shot task inference misses the task (issue 15): variants of the rule on a finished SupSup run.

For each of the first `--batches` test batches of every task, over the superposition of all stored masks
(SupSup.superposition; BatchNorm, where the network has it, on the batch's statistics as the official adaptor runs):
- `one_shot`: the shipped rule, argmin_i dH/dalpha_i at alpha_i = 1/T (H: mean softmax entropy of the batch);
- `one_shot_first`: the official GNu objective, the entropy of the first sample only (data_to_repeat 1);
- `one_shot_fixed_bn`: the gradient with BatchNorm's batch statistics held constant (no gradient through them): if
  BatchNorm's normalisation were what hides the task, this would recover it;
- `vertex_min_entropy`: no gradient, the task whose one-hot superposition (exactly that task's masks) gives the
  lowest entropy: what the first-order rule approximates from the centre of the simplex.
It also checks the gradient's choice against central finite differences (a wrong gradient would be a bug) and the
accuracy of each task's one-hot superposition on its own batches (a wrong superposition would be a bug).

    python scripts/supsup_inference_probe.py -c configs/fmnist.yaml --data runs/fmnist/data \
        --out runs/fmnist/seed0/incremental [--batches 8] [key.sub=value ...]

Prints one line per variant: batches whose task it names, of all, and the confusion counts (rows: true task).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from base.config import load_config
from incremental.loop import task_list
from incremental.methods import make_method
from incremental.task_inference import entropy, test_batches
from pipeline.config import experiment_schema

VARIANTS = ("one_shot", "one_shot_first", "one_shot_fixed_bn", "vertex_min_entropy")


def fixed_stats_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                           eps=1e-5):
    """F.batch_norm on the batch's statistics, detached: the normalisation is applied, but not differentiated."""
    dims = [0, *range(2, x.dim())]
    mean, var = x.mean(dims).detach(), x.var(dims, unbiased=False).detach()
    return _batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


_batch_norm = F.batch_norm


def gradient(superposed, num_tasks: int, x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    alphas = torch.full((num_tasks,), 1.0 / num_tasks, requires_grad=True)
    (grad,) = torch.autograd.grad(entropy(superposed(alphas, x)[:samples]).mean(), alphas)
    return grad


@torch.no_grad()
def finite_differences(superposed, num_tasks: int, x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    out = []
    for i in range(num_tasks):
        up, down = torch.full((num_tasks,), 1.0 / num_tasks), torch.full((num_tasks,), 1.0 / num_tasks)
        up[i] += eps
        down[i] -= eps
        out.append((entropy(superposed(up, x)).mean() - entropy(superposed(down, x)).mean()) / (2 * eps))
    return torch.stack(out)


def probe(method, batches: int) -> dict:
    T = len(method.ctx.tasks)
    superposed = method.superposition(list(range(T)))
    confusion = {v: [[0] * T for _ in range(T)] for v in VARIANTS}
    own, seen, fd_agrees, fd_checked = 0, 0, 0, 0
    for j in range(T):
        for b, (x, y) in enumerate(test_batches(method, j, 128)):
            if b >= batches:
                break
            g = gradient(superposed, T, x)
            confusion["one_shot"][j][int(g.argmin())] += 1
            confusion["one_shot_first"][j][int(gradient(superposed, T, x, samples=1).argmin())] += 1
            F.batch_norm = fixed_stats_batch_norm
            try:
                confusion["one_shot_fixed_bn"][j][int(gradient(superposed, T, x).argmin())] += 1
            finally:
                F.batch_norm = _batch_norm
            with torch.no_grad():
                vertices = [superposed(F.one_hot(torch.tensor(i), T).float(), x) for i in range(T)]
            confusion["vertex_min_entropy"][j][int(torch.stack([entropy(v).mean() for v in vertices]).argmin())] += 1
            own += int((vertices[j].argmax(1) == y).sum())
            seen += y.numel()
            if b == 0:
                fd_agrees += int(finite_differences(superposed, T, x).argmin() == g.argmin())
                fd_checked += 1
    return {"confusion": confusion, "vertex_accuracy": own / seen, "fd_agrees": (fd_agrees, fd_checked)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--data", required=True, help="prepared data folder")
    parser.add_argument("--out", required=True, help="the incremental stage's output folder (holds supsup/)")
    parser.add_argument("--batches", type=int, default=8, help="test batches of 128 per task")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(experiment_schema(), args.config, args.overrides)
    tasks = task_list(Path(args.data), cfg.incremental.num_tasks)
    method = make_method("supsup", cfg, Path(args.data), Path(args.out), Path(args.out) / "supsup", tasks)
    result = probe(method, args.batches)
    for name, rows in result["confusion"].items():
        right, n = sum(rows[j][j] for j in range(len(rows))), sum(map(sum, rows))
        print(f"{name:20s} task named in {right}/{n} batches ({100 * right / n:.1f}%); rows true task: {rows}")
    agree, checked = result["fd_agrees"]
    print(f"one-hot superposition accuracy on its own task: {100 * result['vertex_accuracy']:.1f}%; the task the "
          f"gradient names is the one central finite differences name in {agree}/{checked} batches")


if __name__ == "__main__":
    main()
