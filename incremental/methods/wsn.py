"""WSN, Winning SubNetworks (Kang et al., "Forget-free Continual Learning with Winning Subnetworks", ICML 2022;
official code ihaeyong/WSN: networks/subnet.py, main_wsn_*.py, utils_huffman.py) as a method of the task loop.

- One network, shared by all tasks: every conv/linear weight but the per-task head (methods._masked_net) has a
  learnable real-valued score (official `w_m`, kaiming-uniform). Task t computes with W ⊙ m_t, m_t = the top-c of
  |scores| in each layer (official `GetSubnetFaster` + `percentile`: |s| ≥ the k-th smallest |s|, k = 1 +
  round((1 - c) · (n - 1))); the gradient of m_t passes straight through to the scores (its backward is the identity).
- Weights are reused, never overwritten: a weight in an earlier task's subnetwork (M_{t-1} = m_0 ∨ ... ∨ m_{t-1}, the
  official `consolidated_masks`) is frozen. Its gradient is zeroed before every step (official `train`) and its value
  written back after every step, so the paper recipe's weight decay or momentum cannot move it either. The other
  weights train where m_t selects them. Scores and free weights carry over: task t starts from the network and
  the scores task t-1 left (the official `model.init_masks(task_id)` is commented out).
- Task i's model is W ⊙ m_i, W the shared network as any later task left it: m_i ⊆ M_i, which no later task
  changes, so a stored task's model never changes (forget-free by construction; tests/incremental/test_wsn.py).
- Start: the plain pretrained backbone, the project's common start (the official code trains from a random init).
- BatchNorm and head per task (the official nets use batch statistics, `track_running_stats=False`, and a head per
  task): BN trained from the pretrained BN, its running statistics re-estimated over the task's training data after
  the last epoch (methods._bn_stats), stored with the head.
- Optimizer (recipe "official"): Adam over all that trains (scores, free weights, BN, head), one lr, no weight
  decay. The loop's schedule (milestones) replaces the official per-task one (lr ÷ lr_factor 2 after lr_patience 6
  epochs without a better validation loss, stop below lr_min, best-validation weights restored). An unset `lr` is the
  official 1e-3, raised on a schedule too short for Adam to move a score its init scale (methods._adam_reach, as
  SupSup and DST). Recipe "paper": the shared SGD.

Official settings (scripts/wsn/*.sh over the argparse defaults of the main_wsn_*.py they run):
- PMNIST (wsn_pmnist.sh, main_wsn_pmnist.py): Adam lr 1e-3, lr_min 1e-6, lr_patience 6, lr_factor 2, batch 10,
  5 epochs, MLP 784-100-100 (bias-free), c = the script's argument (argparse default 0.5).
- CIFAR-100 split (wsn_cifar100_100.sh, main_wsn_cifar100_100.py): Adam lr 1e-3, lr_min 1e-6, lr_patience 6,
  lr_factor 2, 200 epochs, batch 64, AlexNet, `--encoding huffman`, c = the argument (argparse default 0.5).
- Mask coding: N = 7 tasks per integer mask (utils_huffman.py: `per_bits = 7`).
So `capacity` 0.5, `huffman_bits` 7, `lr` 1e-3 are the defaults here.

Storage (what the paper stores: the final weights once, each task's binary masks Huffman-coded, per-task BN and head):
- shared, counted once: `network.safetensors`, the float32 weights, rewritten after each task only where no earlier
  task's subnetwork lies; `masks_bNN.safetensors`, block NN = the masks of tasks 7·NN .. 7·NN+6 as one 7-bit integer
  per weight, Huffman-coded per layer (incremental/methods/_wsn_huffman.py). Both are staged and promoted when the
  task is sealed (incremental.stored), like PackNet's shared files.
- per task: `state.safetensors` (BN, head, biases of masked layers if any).
- training state, not memory (no rebuild reads it): `scores/taskNN.safetensors`, the scores task NN+1 starts from;
  its sha256 is in task NN's state metadata and is checked.
Huffman or the project's coding (incremental.coded)? Measured on 5 digits tasks (ResNet-18 x0.125, 174,552 masked
weights, c = 0.5): the Huffman block is 64.3 kB (2.69 bits a weight for the 5 tasks; the 5-bit symbols' entropy is
2.55), coded.py on the same masks stored as bit planes of one integer (its `planes`, ANS over the joint symbol) 77.3
kB, stored as five 1-bit masks 121.5 kB (coded: no smaller, half the bits are set). coded.py does not do as well,
so the masks are stored Huffman-coded, as the paper counts them, and coded.py copies those files
(tests/incremental/test_wsn.py::test_huffman_beats_the_projects_coding_of_the_same_masks).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from incremental.masks import union
from incremental.methods import Method, MethodOptions
from incremental.methods import _adam_reach as adam_reach
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._bn_stats import DEFAULT_BATCHES, recalibrate_task
from incremental.methods._masked_net import HEAD, assemble, bare, masked_params
from incremental.methods._wsn_huffman import block_stats, load_block, pack_tasks, save_block
from incremental.stored import StoredTaskError, is_sealed, staged_path
from nws.io import load_metadata, load_tensors, save_tensors, sha256_file

OFFICIAL_LR = 1e-3
NETWORK = "network.safetensors"
STATE = "state.safetensors"
SCORES = "scores"


class Options(MethodOptions):
    """`incremental.options.wsn` (official defaults, module docstring)."""

    capacity: float = Field(0.5, gt=0, le=1)  # c: fraction of each layer's weights in a task's subnetwork
    huffman_bits: int = Field(7, ge=1, le=12)  # N: tasks whose masks form one N-bit integer per weight
    lr: float | None = Field(None, gt=0)  # None: 1e-3, raised on a short schedule (methods._adam_reach)
    bn_batches: int = Field(DEFAULT_BATCHES, ge=0)  # batches that re-estimate BN statistics at the end; 0 = none


def subnet(scores: torch.Tensor, capacity: float) -> torch.Tensor:
    """The bool mask of the top-c |scores| (official `percentile` with sparsity 1 - c: ties at the k-th smallest
    value are kept, as `torch.where(scores < k_val, 0, 1)` keeps them)."""
    a = scores.detach().abs().flatten()
    k = 1 + round(0.01 * float((1 - capacity) * 100) * (a.numel() - 1))
    return (a >= a.kthvalue(k).values).view(scores.shape)


class Subnet(nn.Module):
    """The parametrization W -> W ⊙ m, m = subnet(scores): the forward uses the binary mask exactly, the backward
    sends the mask's gradient straight through to the scores (official GetSubnetFaster over |w_m|)."""

    def __init__(self, shape: tuple[int, ...], capacity: float):
        super().__init__()
        self.capacity = capacity
        self.scores = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))  # official init_mask_parameters

    def mask(self) -> torch.Tensor:
        return subnet(self.scores, self.capacity)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        a = self.scores.abs()
        return weight * (self.mask().to(weight.dtype) + (a - a.detach()))


def subnet_layers(net: nn.Module) -> dict[str, nn.Module]:
    """{state key of the weight ("layer1.0.conv1.weight"): its conv/linear} of every masked layer (not the head)."""
    return {f"{name}.weight": m for name, m in bare(net).named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and name != HEAD and not name.startswith(HEAD + ".")}


def weight_of(layer: nn.Module) -> nn.Parameter:
    """The trained weight under a layer's Subnet parametrization."""
    return layer.parametrizations.weight.original


class WSN(Method):
    name = "wsn"
    Options = Options
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its Adam
    recipe_keys = ("lr",)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.task = -1
        self.used: dict[str, torch.Tensor] = {}  # M_{t-1}: weights of earlier subnetworks (frozen)
        self.frozen: dict[str, torch.Tensor] = {}  # the shared network when the task started
        self._dev: tuple | None = None
        self._blocks: dict[Path, tuple] = {}  # decoded block files by (size, mtime)

    # ----- files -----

    @property
    def network_path(self) -> Path:
        return self.ctx.method_dir / NETWORK

    def block_path(self, b: int) -> Path:
        return self.ctx.method_dir / f"masks_b{b:02d}.safetensors"

    def scores_path(self, t: int) -> Path:
        return self.ctx.method_dir / SCORES / f"task{t:02d}.safetensors"

    def prepare(self) -> None:
        """Before any task is stored: the shared network is the plain backbone."""
        check_plain(self.ctx)
        if any(is_sealed(self.ctx.task_dir(t)) for t in range(len(self.ctx.tasks))):
            return
        weights = {n: p.detach().clone() for n, p in masked_params(load_plain(self.ctx, 1)).items()}
        save_tensors(self.network_path, weights, metadata={"content": "WSN shared weights"})

    def shared_files(self) -> dict[str, list[Path]]:
        blocks = math.ceil(len(self.ctx.tasks) / self.opts.huffman_bits)
        paths = [self.block_path(b) for b in range(blocks)]
        return {"network": [self.network_path],
                "masks": [p for p in paths if p.is_file() or staged_path(p).is_file()]}

    def block(self, path: Path) -> tuple[int, list[dict[str, torch.Tensor]]]:
        """load_block, decoded once per version of the file."""
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if self._blocks.get(path, (None,))[0] != key:
            self._blocks[path] = (key, load_block(path))
        return self._blocks[path][1]

    def stored_masks(self, count: int, path_of=None) -> list[dict[str, torch.Tensor]]:
        """The binary masks of tasks 0 .. count-1 from the block files (`path_of(b)`: block b's file)."""
        path_of, n, out = path_of or self.block_path, self.opts.huffman_bits, []
        for b in range(math.ceil(count / n)):
            path = path_of(b)
            if not path.is_file():
                raise StoredTaskError(f"{path}: missing (the masks of tasks {b * n}..{min(count, b * n + n) - 1})")
            first, masks = self.block(path)
            need = min(count - b * n, n)
            if first != b * n or len(masks) < need:
                raise StoredTaskError(f"{path}: holds tasks {first}..{first + len(masks) - 1}, tasks {b * n}.."
                                      f"{b * n + need - 1} expected")
            out += masks[:need]
        return out

    # ----- training -----

    def setup_task(self, t: int) -> nn.Module:
        net = load_plain(self.ctx, self.ctx.tasks[t].num_classes)
        layers = subnet_layers(net)
        values = load_tensors(self.network_path)
        if {n: tuple(v.shape) for n, v in values.items()} != {n: tuple(m.weight.shape) for n, m in layers.items()}:
            raise StoredTaskError(f"{self.network_path}: layers do not match the configured network")
        scores = self.carried_scores(t) if t > 0 else None
        self.frozen, self.used = values, union(self.stored_masks(t), values)
        self.task, self._dev = t, None
        with torch.no_grad():
            for n, layer in layers.items():
                layer.weight.copy_(values[n])
                parametrize.register_parametrization(layer, "weight", Subnet(tuple(layer.weight.shape),
                                                                             self.opts.capacity))
                if scores is not None:
                    layer.parametrizations.weight[0].scores.copy_(scores[n])
        return net

    def carried_scores(self, t: int) -> dict[str, torch.Tensor]:
        """The scores task t-1 ended with, checked against the checksum its state file recorded."""
        path, state = self.scores_path(t - 1), self.ctx.task_dir(t - 1) / STATE
        want = load_metadata(state).get("scores_sha256") if state.is_file() else None
        if not path.is_file() or want != sha256_file(path):
            why = "missing" if not path.is_file() else f"checksum mismatch with {state}"
            raise StoredTaskError(f"{path}: {why}; task {t} starts from the scores task {t - 1} ended with (train task "
                                  f"{t - 1} again)")
        return load_tensors(path)

    def lr(self, t: int) -> float:
        """`lr` as given; unset, the official Adam 1e-3 raised to what task t's schedule needs
        (methods._adam_reach); recipe "paper": incremental.lr."""
        if self.recipe == "paper":
            return self.inc.lr
        if self.opts.lr is not None:
            return self.opts.lr
        return adam_reach.adam_lr(OFFICIAL_LR, adam_reach.reach(self.ctx, t))

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.Adam(groups, lr=self.lr(self.task), weight_decay=0.0)

    def _on(self, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._dev is None or self._dev[0] != device:
            self._dev = (device, {n: (u.to(device), self.frozen[n].to(device)) for n, u in self.used.items()})
        return self._dev[1]

    def before_step(self, model: nn.Module) -> None:
        for n, layer in subnet_layers(model).items():
            w = weight_of(layer)
            if w.grad is not None:
                w.grad.masked_fill_(self._on(w.device)[n][0], 0)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for n, layer in subnet_layers(model).items():
            w = weight_of(layer)
            used, frozen = self._on(w.device)[n]
            w.copy_(torch.where(used, frozen.to(w.dtype), w))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """After the last epoch: BN statistics for the final subnetwork."""
        sched = self.ctx.schedule
        sched = sched if sched is not None and sched.task == self.task else self.ctx.schedule_for(self.task)
        if epoch + 1 == sched.epochs:
            recalibrate_task(model, self.ctx, self.task, self.opts.bn_batches)

    # ----- storage -----

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Task t's BN + head into its folder; the network and task t's block of masks staged (stored.py); the
        scores for task t+1 beside them."""
        if t != self.task:
            raise RuntimeError(f"WSN: asked to store task {t}, but task {self.task} was set up")
        layers = subnet_layers(model)
        weights = {n: weight_of(m).detach().cpu().clone() for n, m in layers.items()}
        for n, w in weights.items():
            if not torch.equal(w[self.used[n]], self.frozen[n][self.used[n]]):
                raise RuntimeError(f"WSN task {t}: {n} changed a weight of an earlier task's subnetwork")
        masks = {n: m.parametrizations.weight[0].mask().cpu() for n, m in layers.items()}
        scores = {n: m.parametrizations.weight[0].scores.detach().cpu().clone() for n, m in layers.items()}
        b, i = divmod(t, self.opts.huffman_bits)
        block = self.stored_masks(t)[b * self.opts.huffman_bits:] if i else []
        save_block(staged_path(self.block_path(b)), [*block, masks], b * self.opts.huffman_bits,
                   self.opts.huffman_bits)
        save_tensors(staged_path(self.network_path), weights, metadata={"content": "WSN shared weights",
                                                                        "tasks": str(t + 1)})
        save_tensors(self.scores_path(t), scores, metadata={"content": f"WSN scores after task {t}"})
        for old in self.scores_path(t).parent.glob("task*.safetensors"):  # task t+1 needs t's; a retried t, t-1's
            if int(old.stem[4:]) < t - 1:
                old.unlink()
        state = {k: v.detach().clone() for k, v in bare(model).state_dict().items() if ".parametrizations." not in k}
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes),
                "capacity": str(self.opts.capacity), "lr": str(self.lr(t)),
                "scores_sha256": sha256_file(self.scores_path(t))}
        save_tensors(folder / STATE, state, metadata=meta)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        if Path(folder) != self.ctx.task_dir(t):
            raise ValueError(f"task {t} is stored in {self.ctx.task_dir(t)}, not {folder}")
        values, mask = load_tensors(self.network_path), self.stored_masks(t + 1)[t]
        if set(values) != set(mask):
            raise StoredTaskError(f"{self.network_path}: layers {sorted(values)}, masks of {sorted(mask)}")
        weights = {n: v * mask[n].to(v.dtype) for n, v in values.items()}  # the product the training forward takes
        return assemble(self.ctx.cfg.model, self.ctx.tasks[t].num_classes, weights, load_tensors(folder / STATE),
                        folder / STATE)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"state": [folder / STATE]}

    # ----- reports -----

    def task_report(self, t: int, folder: Path) -> dict:
        """Task t's subnetwork (density, the share reused from earlier tasks, the network used so far) and its mask
        block as stored after task t: Huffman bits per weight against 1 bit per task and the N-bit symbols' entropy."""
        masks = self.stored_masks(t + 1)
        mine, before = masks[t], union(masks[:t], masks[t])
        after = union(masks, mine)
        numel = sum(m.numel() for m in mine.values())
        active = sum(int(m.sum()) for m in mine.values())
        reused = sum(int((mine[n] & before[n]).sum()) for n in mine)
        b = t // self.opts.huffman_bits
        stats = block_stats(self.block_path(b))
        block = masks[b * self.opts.huffman_bits:]
        entropy = sum(_entropy_bits(pack_tasks([m[n].numpy() for m in block]), 1 << len(block)) for n in mine)
        lr = load_metadata(folder / STATE).get("lr")
        return {"masked_weights": numel, "density": active / numel, "reused_fraction": reused / max(active, 1),
                "capacity_used": sum(int(m.sum()) for m in after.values()) / numel,
                "block": b, "block_tasks": stats["tasks"], "block_bytes": stats["file_bytes"],
                "huffman_bits_per_weight": stats["code_bits"] / numel, "entropy_bits_per_weight": entropy / numel,
                "layer_density": {n: float(m.float().mean()) for n, m in mine.items()},
                "lr": float(lr) if lr else None}

    def run_report(self, reports: list[dict]) -> dict:
        """Per task: density, reuse, the network used so far, the mask bits per weight of its block; at the end the
        masks' bits per weight and task (all blocks' Huffman streams over weights × tasks)."""
        last = {}
        for r in reports:
            last[r["block"]] = r  # each block as its last task left it
        tasks = sum(r["block_tasks"] for r in last.values())
        return {"capacity": self.opts.capacity, "huffman_bits": self.opts.huffman_bits,
                "density_per_task": [r["density"] for r in reports],
                "reused_fraction_per_task": [r["reused_fraction"] for r in reports],
                "capacity_used_per_task": [r["capacity_used"] for r in reports],
                "huffman_bits_per_weight_per_task": [r["huffman_bits_per_weight"] for r in reports],
                "entropy_bits_per_weight_per_task": [r["entropy_bits_per_weight"] for r in reports],
                "lr_per_task": [r.get("lr") for r in reports],
                "mask_bits_per_weight_and_task": sum(r["huffman_bits_per_weight"] for r in last.values())
                / max(tasks, 1)}


def _entropy_bits(values: np.ndarray, alphabet: int) -> float:
    """Σ -log2 p(symbol) over `values` with p their histogram: the bits a coder at the empirical entropy needs."""
    counts = np.bincount(values, minlength=alphabet)
    p = counts[counts > 0] / values.size
    return float(-(counts[counts > 0] * np.log2(p)).sum())


METHOD = WSN
