"""PackNet (Mallya & Lazebnik 2018; official code arunmallya/packnet, notes/algorithms.md §4) as a method of the
task loop.

- One shared network: every conv/linear weight but the per-task head (methods._masked_net) has an owner, 0 = free
  or k = task k-1. Before task 0 all weights are free and hold the plain pretrained backbone.
- Task t takes every free weight (owner ← t+1) and trains only those: gradients of the others are zeroed before
  each step and after each step the others are written back (weights of tasks < t to their stored values, freed
  ones to 0), so no other task's weight ever changes, bit for bit, whatever the optimizer or weight decay does.
- After `train_epochs` epochs, in each layer the `prune_perc` (0.75, the official per-task ratio; seed 001_ App. 5:
  0.6, the CPG code's) of task t's weights with the smallest |w| are freed (owner ← 0, value ← 0) and the remaining
  epochs retrain what is left. With `retrain_epochs` (App. 5: 30) the task trains its whole budget (App. 5: 100
  epochs), then that many epochs more (incremental.schedule.lengthened: at the lr the last milestone left); without
  it the budget is split, 2/3 training + 1/3 retraining (the official 20 + 10 epochs).
  Every task is pruned, the last one too (the official script keeps the last task unpruned; here a later run may
  still add tasks).
- Inference for task i uses the weights owned by tasks <= i; later tasks' and free weights are 0.
- Optimizer: the loop's SGD (the official one is SGD with momentum 0.9 too).
- BatchNorm (option `bn`): "train" (default; the NWS paper's PackNet from the CPG code, seed 001_ appendix, "for
  each task, it saves the statistics of batch normalization layers"): trained per task from the pretrained values and
  stored with the task's head; at the end of the task's last epoch the running statistics are re-estimated over the
  task's training data with the final (pruned and retrained) weights (methods._bn_stats), so the stored
  statistics belong to the stored weights. Without that, pruning 75% of the weights a few steps before the end left
  moving averages of the unpruned network (on the test fixture task 0's variances were off by a median 33%, and
  filters pruned to constants kept a variance): task 0 scored 71% (issue 14's demo: 50%, chance), 100% with
  re-estimated statistics.
  "frozen": the official PackNet default (`train_nobn`, BN gradients zeroed; notes/algorithms.md §4): BN in
  evaluation mode with the pretrained statistics and affine parameters throughout, so training and evaluation
  compute the same function; the (unchanged) BN is still stored with each task's head. It suits the official
  recipe (SGD lr 1e-3, 20 + 10 epochs, an ImageNet base pruned by half); on the demo's 54 steps the statistics of the
  dense network do not fit task 0's remaining 25% of the weights (lr 0.05: every task at chance; lr 0.01: 87% on
  average, task 0 54%).

Storage: shared, counted once: `network.safetensors` (float32 values of the masked weights) and
`owners.safetensors`, the owner map as B = bit_length(number of owners) bit planes, each bit-packed with
incremental.masks (so B bits per weight: 3 for 5 tasks, 4 for up to 15). Per task: `state.safetensors` (BN + head).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from base.config import ConfigError
from incremental.masks import load_masks, packed_bytes, save_masks
from incremental.methods import Method, MethodOptions
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._bn_stats import DEFAULT_BATCHES, freeze_batchnorm, recalibrate_task
from incremental.methods._masked_net import assemble, masked_params, task_state
from incremental.stored import StoredTaskError, is_sealed, staged_path
from nws.io import load_metadata, load_tensors, save_tensors

NETWORK = "network.safetensors"
OWNERS = "owners.safetensors"
STATE = "state.safetensors"
BITS = "owner_bits"
MAX_OWNER = 255  # owners are uint8 in memory


class Options(MethodOptions):
    """`incremental.options.packnet`."""

    prune_perc: float = Field(0.75, ge=0, lt=1)  # fraction of each task's weights freed after training
    # epochs of retraining after the task's budget (seed 001_ App. 5: 100 + 30); None: the budget is split
    retrain_epochs: int | None = Field(None, ge=1)
    # epochs before pruning; None = the budget with retrain_epochs, else round(2/3 · epochs), at least 1
    train_epochs: int | None = Field(None, ge=1)
    bn: Literal["train", "frozen"] = "train"  # per-task BN re-estimated at the end, or the official frozen BN
    bn_batches: int = Field(DEFAULT_BATCHES, ge=0)  # batches that re-estimate BN statistics ("train"); 0 = none


def save_owners(path: Path, owners: dict[str, torch.Tensor]) -> int:
    """Write the owner map as bit planes (`<layer>.bit<b>` = bit b of every owner, bit-packed); returns B."""
    bits = max(1, max(int(o.max()) for o in owners.values()).bit_length())
    planes = {f"{n}.bit{b}": ((o >> b) & 1) == 1 for n, o in owners.items() for b in range(bits)}
    save_masks(path, planes, metadata={BITS: str(bits), "layers": json.dumps(list(owners)),
                                       "content": "owner task + 1 of each masked weight (0 = free), bit planes"})
    return bits


def load_owners(path: Path) -> dict[str, torch.Tensor]:
    """The uint8 owner map `save_owners` wrote."""
    meta = load_metadata(path)
    try:
        bits, layers = int(meta[BITS]), json.loads(meta["layers"])
    except (KeyError, ValueError) as e:
        raise StoredTaskError(f"{path}: not an owner map ({e})") from None
    planes = load_masks(path)
    owners = {}
    for n in layers:
        missing = [b for b in range(bits) if f"{n}.bit{b}" not in planes]
        if missing:
            raise StoredTaskError(f"{path}: layer {n} lacks bit planes {missing} of {bits}")
        owners[n] = sum(planes[f"{n}.bit{b}"].to(torch.uint8) << b for b in range(bits)).to(torch.uint8)
    return owners


class PackNet(Method):
    name = "packnet"
    Options = Options

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.extra_epochs = self.opts.retrain_epochs or 0  # every task's schedule: the budget, then the retraining
        if self.inc.epochs is not None:  # an epochs budget: refuse a bad train_epochs before any work
            self.train_epochs, self.epochs = self.epochs_of(self.inc.epochs + ctx.extra_epochs)
        self.owners: dict[str, torch.Tensor] = {}  # uint8 owner map while training task `task`
        self.frozen: dict[str, torch.Tensor] = {}  # values of the shared network when the task started
        self.task, self.pruned = -1, False
        self._dev: tuple | None = None

    @property
    def network_path(self) -> Path:
        return self.ctx.method_dir / NETWORK

    @property
    def owners_path(self) -> Path:
        return self.ctx.method_dir / OWNERS

    def prepare(self) -> None:
        """Before any task is stored: the shared network is the plain backbone and every weight is free."""
        check_plain(self.ctx)
        if any(is_sealed(self.ctx.task_dir(t)) for t in range(len(self.ctx.tasks))):
            return
        net = load_plain(self.ctx, 1)
        weights = {n: p.detach().clone() for n, p in masked_params(net).items()}
        save_tensors(self.network_path, weights, metadata={"content": "shared masked weights"})
        save_owners(self.owners_path, {n: torch.zeros(w.shape, dtype=torch.uint8) for n, w in weights.items()})

    def shared_files(self) -> dict[str, list[Path]]:
        return {"network": [self.network_path], "owners": [self.owners_path]}

    def shared(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(shared weight values, owner map) as stored."""
        values, owners = load_tensors(self.network_path), load_owners(self.owners_path)
        if set(values) != set(owners):
            raise StoredTaskError(f"{self.owners_path}: layers {sorted(owners)} differ from {self.network_path}'s "
                                  f"{sorted(values)}")
        return values, owners

    # ----- training -----

    def epochs_of(self, epochs: int) -> tuple[int, int]:
        """(epochs before pruning, all epochs) of a task that trains `epochs` epochs (its retraining included)."""
        retrain = self.opts.retrain_epochs
        train = self.opts.train_epochs or (epochs - retrain if retrain else max(1, round(2 * epochs / 3)))
        if train > epochs:
            raise ConfigError(f"incremental.options.packnet.train_epochs={train} exceeds the {epochs} epochs a task "
                              "trains (incremental.epochs, or its schedule in steps)")
        return train, epochs

    def schedule(self, t: int):
        """Task t's resolved schedule (incremental.schedule): the loop's while t trains, else from the config."""
        sched = self.ctx.schedule
        return sched if sched is not None and sched.task == t else self.ctx.schedule_for(t)

    def setup_task(self, t: int) -> nn.Module:
        if t + 1 > MAX_OWNER:
            raise ValueError(f"PackNet keeps at most {MAX_OWNER} tasks (uint8 owners)")
        net = load_plain(self.ctx, self.ctx.tasks[t].num_classes)
        params = masked_params(net)
        values, owners = self.shared()
        if set(values) != set(params):
            raise StoredTaskError(f"{self.network_path}: layers {sorted(values)} do not match the configured network")
        for n, o in owners.items():
            later = o > t  # left by an unfinished earlier attempt at task t (or later): free again
            values[n][later] = 0
            o[later] = 0
            o[o == 0] = t + 1
        self.frozen, self.owners, self.task, self.pruned, self._dev = values, owners, t, False, None
        self.train_epochs, self.epochs = self.epochs_of(self.schedule(t).epochs)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(values[n])
        return freeze_batchnorm(net) if self.opts.bn == "frozen" else net

    def _on(self, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(mine, value to hold where not mine) per layer on `device`, cached until the owners change."""
        if self._dev is None or self._dev[0] != device:
            me = self.task + 1
            self._dev = (device, {n: ((o == me).to(device), torch.where(o == 0, 0.0, self.frozen[n]).to(device))
                                  for n, o in self.owners.items()})
        return self._dev[1]

    def before_step(self, model: nn.Module) -> None:
        for n, p in masked_params(model).items():
            if p.grad is not None:
                p.grad.masked_fill_(~self._on(p.device)[n][0], 0)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for n, p in masked_params(model).items():
            mine, other = self._on(p.device)[n]
            p.copy_(torch.where(mine, p, other.to(p.dtype)))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Prune after `train_epochs` epochs; after the last epoch, BN statistics for the final weights."""
        if epoch + 1 == self.train_epochs and not self.pruned:
            self.prune(model)
        if epoch + 1 == self.epochs and self.opts.bn == "train":
            recalibrate_task(model, self.ctx, self.task, self.opts.bn_batches)

    @torch.no_grad()
    def prune(self, model: nn.Module) -> None:
        """Free the prune_perc smallest-|w| weights of this task, per layer (owner 0, value 0)."""
        me = self.task + 1
        for n, p in masked_params(model).items():
            mine = (self.owners[n] == me).flatten()
            k = round(self.opts.prune_perc * int(mine.sum()))
            score = torch.where(mine, p.detach().abs().flatten().cpu(), torch.full((mine.numel(),), float("inf")))
            drop = torch.argsort(score, stable=True)[:k]
            self.owners[n].view(-1)[drop] = 0
        self.pruned, self._dev = True, None
        self.after_step(model, -1)  # freed weights to 0 now

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {**{f"owner/{n}": o for n, o in self.owners.items()}, "pruned": torch.tensor([int(self.pruned)])}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.owners = {n: state[f"owner/{n}"].to(torch.uint8).cpu() for n in self.owners}
        self.pruned, self._dev = bool(state["pruned"][0]), None

    # ----- storage -----

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Task t's BN + head into its folder; its weights and the new owner map into the shared files."""
        if t != self.task:
            raise RuntimeError(f"PackNet: asked to store task {t}, but task {self.task} was set up")
        me, network = t + 1, {}
        for n, p in masked_params(model).items():
            w, o = p.detach().cpu(), self.owners[n]
            earlier = (o > 0) & (o < me)
            if not torch.equal(w[earlier], self.frozen[n][earlier]) or bool(w[o == 0].any()):
                raise RuntimeError(f"PackNet task {t}: {n} breaks the ownership invariants (another task's weight "
                                   "changed or a free weight is nonzero)")
            network[n] = torch.where(o == me, w, torch.where(earlier, self.frozen[n], torch.zeros(())))
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes)}
        save_tensors(folder / STATE, task_state(model), metadata=meta)
        # the new shared files go beside the old ones; the loop promotes them once the task is sealed (stored.py)
        save_tensors(staged_path(self.network_path), network,
                     metadata={"content": "shared masked weights", "tasks": str(me)})
        save_owners(staged_path(self.owners_path), self.owners)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        if Path(folder) != self.ctx.task_dir(t):
            raise ValueError(f"task {t} is stored in {self.ctx.task_dir(t)}, not {folder}")
        values, owners = self.shared()
        weights = {n: torch.where((o >= 1) & (o <= t + 1), values[n], torch.zeros(())) for n, o in owners.items()}
        return assemble(self.ctx.cfg.model, self.ctx.tasks[t].num_classes, weights, load_tensors(folder / STATE),
                        folder / STATE)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"state": [folder / STATE]}

    # ----- reports -----

    def task_report(self, t: int, folder: Path) -> dict:
        """Fraction of the masked weights task t owns, the fraction task t computes with (owners <= t), what is
        still free, and the owner map's bits per weight (read from the shared files as they are after task t)."""
        owners = load_owners(self.owners_path)
        numel = sum(o.numel() for o in owners.values())
        owned = sum(int((o == t + 1).sum()) for o in owners.values())
        usable = sum(int(((o >= 1) & (o <= t + 1)).sum()) for o in owners.values())
        free = sum(int((o == 0).sum()) for o in owners.values())
        bits = int(load_metadata(self.owners_path)[BITS])
        return {"masked_weights": numel, "owned": owned, "owned_fraction": owned / numel,
                "density": usable / numel, "free_fraction": free / numel, "owner_bits": bits,
                "owner_payload_bytes": packed_bytes({f"{n}.bit{b}": o for n, o in owners.items()
                                                     for b in range(bits)}),
                "state_bytes": (folder / STATE).stat().st_size,
                "train_epochs": self.epochs_of(self.schedule(t).epochs)[0],
                "layer_owned_fraction": {n: float((o == t + 1).float().mean()) for n, o in owners.items()}}

    def run_report(self, reports: list[dict]) -> dict:
        return {
            "prune_perc": self.opts.prune_perc, "bn": self.opts.bn,
            "train_epochs_per_task": [r["train_epochs"] for r in reports],
            "owned_fraction_per_task": [r["owned_fraction"] for r in reports],
            "density_per_task": [r["density"] for r in reports],
            "free_fraction": reports[-1]["free_fraction"] if reports else 1.0,
            "owner_bits_per_weight": reports[-1]["owner_bits"] if reports else 0,
        }


METHOD = PackNet
