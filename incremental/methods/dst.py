"""Dynamic sparse training for continual learning (seed 003_, Yildirim et al.; official code
muratonuryildirim/CL-with-DST, notes/algorithms.md §3) as a method of the task loop.

What is implemented, exactly:
- Masked weights: every conv/linear weight but the per-task head (methods._masked_net). Task t draws a fresh mask
  over ALL of them at `density` (`uniform`, or per-layer ERK densities), exact counts per layer (methods._dst_sparse).
  Like the official code the mask is not restricted to free weights: masks of different tasks may overlap.
- Weights of earlier tasks are frozen and shared read-only: a position in the union of the masks of tasks < t holds
  the value the task that first used it stored. Task t reads it wherever its own mask covers it (also after a
  regrowth: the official code feeds such a regrown position 0 while training but its old value at test time; here
  it is the old value in both). Its gradient is zeroed before every step (official `isolate`) and after every step
  the frozen values are written back, so they stay bit-identical whatever the optimizer does.
- Free positions of task t's initial mask start from the plain pretrained backbone (the project's common start;
  the official code starts task 0 from a random init and later tasks from 0); regrown free positions start at 0.
- After every optimizer step: weights outside the mask are zeroed (and an SGD momentum buffer masked); every
  `update_frequency` steps, per layer, ceil(r·active) active weights of smallest |w| are pruned and as many inactive
  ones regrown by `random`, `unfired` (never active in this task first), `momentum` (Adam m/(√v+1e-8), or the SGD
  momentum buffer) or `gradient` (|grad|), r cosine-decayed from `death_rate` to `death_rate_min` over the task's
  steps (DeathCosineDecay). Never at the task's last step: what it would regrow (at 0) could not train any more.
- `update_frequency` left unset follows the task's length: ceil(steps / 4), i.e. three prune/regrow rounds at 1/4,
  1/2 and 3/4 of the task, the official CIFAR-100 rhythm (400 steps in 20 epochs × 79 steps = 1,580: rounds at 25%,
  51%, 76%). The official fixed 400 would never prune on a task shorter than 400 steps (the demo's 54 or 18 steps:
  static sparse training, not DST) and would prune hundreds of times on a very long one. An explicit value wins.
- Optimizer: Adam lr 1e-3, weight decay 0 (official defaults; `optimizer: sgd` uses the loop's momentum), scaled by
  the loop's epoch schedule (the official MultiStepLR at 50%/75% of the epochs is `incremental.milestones`). An
  unset `lr` is raised on a schedule too short for Adam's steps of ~lr to move a weight its own scale
  (methods._adam_reach: 1e-2 at 18 steps a task, 2.6e-3 at the demo's 54, 1e-3 on the official 1,580).
- BatchNorm and head: per task, trained from the pretrained BatchNorm (the official net uses batch statistics at test
  time and a shared 100-way head; here tasks have their own heads and stored BN, like every method of the loop).
  The stored running statistics are recomputed for the final sparse network over the task's training split
  (`recalibrate_bn`, methods._bn_recal_supsup_dst): the running averages of training start from the dense
  backbone's statistics and follow a network that loses 80% of its weights at the first step and is pruned and
  regrown after. With 18 steps a task (the demo at 2 epochs) the stored tasks scored 0.50 0.49 0.76 0.50 0.51 with
  them, the same weights 1.00 0.86 0.96 0.90 0.70 with recomputed statistics.
- Artifact of task t: `mask.safetensors` (bit-packed, 1 bit per masked weight), `owned.safetensors` (float32 values
  of the positions task t is the first to use: mask_t minus the union of earlier masks), `state.safetensors` (BN +
  head). Task t is rebuilt from the artifacts of tasks 0..t: W = mask_t ⊙ (values each position's first user stored).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from incremental.masks import load_masks, packed_bytes, save_masks, union
from incremental.methods import Method, MethodOptions
from incremental.methods import _adam_reach as adam_reach
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._bn_recal_supsup_dst import recalibrate_task
from incremental.methods._dst_sparse import death_rate, init_masks, prune_magnitude, regrow
from incremental.methods._masked_net import assemble, masked_params, task_state
from incremental.stored import StoredTaskError, is_sealed, verify_task
from loaders import derive_seed
from nws.io import load_metadata, load_tensors, save_tensors

OFFICIAL_LR = 1e-3
UPDATES_PER_TASK = 4  # an unset update_frequency is ceil(steps / 4): rounds at 1/4, 1/2, 3/4 of the task
MASK = "mask.safetensors"
OWNED = "owned.safetensors"
STATE = "state.safetensors"


class Options(MethodOptions):
    """`incremental.options.dst` (defaults of cifar100.py of the official code)."""

    density: float = Field(0.2, gt=0, le=1)  # fraction of masked weights active in each task's mask
    init: Literal["uniform", "ERK"] = "uniform"
    growth: Literal["random", "unfired", "momentum", "gradient"] = "random"
    death_rate: float = Field(0.5, ge=0, le=1)  # pruning rate at the first step, cosine-decayed
    death_rate_min: float = Field(0.005, ge=0, le=1)  # ... to this at the last step of the task
    update_frequency: int | None = Field(None, ge=1)  # optimizer steps between prune/regrow; None: ceil(steps / 4)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = Field(None, gt=0)  # None: 1e-3 (official), raised on a short schedule (methods._adam_reach)
    weight_decay: float = Field(0.0, ge=0)
    recalibrate_bn: bool = True  # store BN statistics recomputed for the final network (False: the running averages)


def trained_with(meta: dict[str, str]) -> dict:
    """The schedule-dependent settings a task was trained with, from its mask file's metadata (None: not recorded,
    a task stored before they were)."""
    every, lr = meta.get("update_frequency"), meta.get("lr")
    return {"update_frequency": int(every) if every else None, "lr": float(lr) if lr else None}


class DST(Method):
    name = "dst"
    Options = Options
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its Adam
    recipe_keys = ("optimizer", "lr", "weight_decay")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.masks: dict[str, torch.Tensor] = {}  # the current task's mask (CPU)
        self.fired: dict[str, torch.Tensor] = {}  # positions active at some point of the current task
        self.used: dict[str, torch.Tensor] = {}  # union of the masks of earlier tasks (frozen positions)
        self.frozen: dict[str, torch.Tensor] = {}  # values stored by earlier tasks (0 where none)
        self.task, self.step, self.total_steps, self.every = -1, 0, 1, 1
        self._grads: dict[str, torch.Tensor] = {}
        self._dev: tuple | None = None

    def prepare(self) -> None:
        check_plain(self.ctx)

    # ----- the chain of stored tasks -----

    def chain(self, t: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """(values of every position some task <= t stored, [mask_0 .. mask_t]) from the stored artifacts."""
        values: dict[str, torch.Tensor] = {}
        masks: list[dict[str, torch.Tensor]] = []
        for j in range(t + 1):
            folder = self.ctx.task_dir(j)
            if j < t and is_sealed(folder):
                verify_task(folder)
            mask, owned = load_masks(folder / MASK), load_tensors(folder / OWNED)
            if not values:
                values = {n: torch.zeros(m.shape) for n, m in mask.items()}
            if set(mask) != set(values) or set(owned) != set(values):
                raise StoredTaskError(f"{folder}: {MASK} / {OWNED} hold layers {sorted(mask)} / {sorted(owned)}, "
                                      f"expected {sorted(values)}")
            used = union(masks, values)
            for n, m in mask.items():
                first = m & ~used[n]
                if owned[n].numel() != int(first.sum()):
                    raise StoredTaskError(f"{folder / OWNED}: {n} holds {owned[n].numel()} values, but the masks give "
                                          f"task {j} {int(first.sum())} positions of its own")
                values[n][first] = owned[n].to(values[n].dtype)
            masks.append(mask)
        return values, masks

    def steps_of_task(self, t: int) -> int:
        """Optimizer steps task t will take: the T_max of the cosine death-rate decay."""
        return adam_reach.steps(self.ctx, t)

    def lr(self, t: int) -> float:
        """`lr` as given; unset, the official Adam 1e-3 raised to what task t's schedule needs (methods._adam_reach);
        the official SGD option keeps 1e-3; recipe "paper": incremental.lr."""
        if self.recipe == "paper":
            return self.inc.lr
        if self.opts.lr is not None:
            return self.opts.lr
        if self.opts.optimizer == "sgd":
            return OFFICIAL_LR
        return adam_reach.adam_lr(OFFICIAL_LR, adam_reach.reach(self.ctx, t))

    def update_every(self, steps: int) -> int:
        """Steps between prune/regrow rounds on a task of `steps` steps: `update_frequency`, or ceil(steps / 4)."""
        return self.opts.update_frequency or max(1, math.ceil(steps / UPDATES_PER_TASK))

    def is_update(self, step: int) -> bool:
        """Whether prune/regrow follows optimizer step `step` (1-based): every `every` steps, never at the last."""
        return step % self.every == 0 and step < self.total_steps

    # ----- training -----

    def setup_task(self, t: int) -> nn.Module:
        net = load_plain(self.ctx, self.ctx.tasks[t].num_classes)
        params = masked_params(net)
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        if t > 0:
            self.frozen, earlier = self.chain(t - 1)
            if set(self.frozen) != set(shapes):
                raise StoredTaskError(f"{self.ctx.task_dir(0) / MASK}: layers {sorted(self.frozen)} do not match the "
                                      f"configured network's {sorted(shapes)}")
            self.used = union(earlier, self.frozen)
        else:
            self.frozen = {n: torch.zeros(s) for n, s in shapes.items()}
            self.used = {n: torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()}
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.cfg.seeds[0], t, 3))
        self.masks = init_masks(shapes, self.opts.density, self.opts.init, gen)
        self.fired = {n: m.clone() for n, m in self.masks.items()}
        self.task, self.step, self.total_steps = t, 0, self.steps_of_task(t)
        self.every = self.update_every(self.total_steps)
        self._dev, self.optimizer = None, None
        self.apply_mask(net)
        return net

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """Adam (the official default) or the official SGD option, at `lr(task)` with the option's weight decay."""
        o, lr = self.opts, self.lr(self.task)
        if o.optimizer == "adam":
            return torch.optim.Adam(groups, lr=lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(groups, lr=lr, momentum=self.inc.momentum, weight_decay=o.weight_decay,
                               nesterov=self.inc.nesterov and self.inc.momentum > 0)

    def _on(self, device) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(mask, earlier tasks' positions, their values) per layer on `device` (cached until the masks change)."""
        if self._dev is None or self._dev[0] != device:
            self._dev = (device, {n: (m.to(device), self.used[n].to(device), self.frozen[n].to(device))
                                  for n, m in self.masks.items()})
        return self._dev[1]

    @torch.no_grad()
    def apply_mask(self, model: nn.Module) -> None:
        """w ← mask ⊙ (frozen value where an earlier task stored one, else w); an SGD momentum buffer is masked."""
        for n, p in masked_params(model).items():
            mask, used, frozen = self._on(p.device)[n]
            p.copy_(torch.where(mask & used, frozen.to(p.dtype), p))
            p.masked_fill_(~mask, 0)
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                state["momentum_buffer"].mul_(mask)

    def before_step(self, model: nn.Module) -> None:
        update = self.is_update(self.step + 1)
        for n, p in masked_params(model).items():
            if p.grad is None:
                continue
            p.grad.masked_fill_(self._on(p.device)[n][1], 0)  # isolate: earlier tasks' weights get no update
            if update and self.opts.growth == "gradient":
                self._grads[n] = p.grad.detach().cpu().clone()

    def _score(self, n: str, p: torch.Tensor) -> torch.Tensor | None:
        if self.opts.growth == "gradient":
            return self._grads.get(n, torch.zeros(p.shape))
        if self.opts.growth != "momentum":
            return None
        state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
        if "exp_avg" in state:
            return (state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)).cpu()
        if state.get("momentum_buffer") is not None:
            return state["momentum_buffer"].cpu()
        return torch.zeros(p.shape)

    def after_step(self, model: nn.Module, step: int) -> None:
        self.step = step
        self.apply_mask(model)
        if not self.is_update(step):
            return
        rate = death_rate(step, self.total_steps, self.opts.death_rate, self.opts.death_rate_min)
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.cfg.seeds[0], self.task, step, 5))
        for n, p in masked_params(model).items():
            pruned, k = prune_magnitude(p.detach().cpu(), self.masks[n], rate)
            self.masks[n] = regrow(pruned, k, self.opts.growth, gen, self._score(n, p), self.fired[n])
            self.fired[n] |= self.masks[n]
        self._dev, self._grads = None, {}
        self.apply_mask(model)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {**{f"mask/{n}": m for n, m in self.masks.items()}, **{f"fired/{n}": f for n, f in self.fired.items()},
                "step": torch.tensor([self.step])}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.masks = {n: state[f"mask/{n}"].cpu() for n in self.masks}
        self.fired = {n: state[f"fired/{n}"].cpu() for n in self.fired}
        self.step, self._dev = int(state["step"][0]), None

    # ----- storage -----

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        if t != self.task:
            raise RuntimeError(f"DST: asked to store task {t}, but task {self.task} was set up")
        owned = {}
        for n, p in masked_params(model).items():
            w, mask, used = p.detach().cpu(), self.masks[n], self.used[n]
            if not torch.equal(w[mask & used], self.frozen[n][mask & used]) or bool((w[~mask] != 0).any()):
                raise RuntimeError(f"DST task {t}: {n} breaks the mask invariants (frozen weights changed or weights "
                                   "outside the mask are nonzero)")
            owned[n] = w[mask & ~used].clone()
        if self.opts.recalibrate_bn:
            recalibrate_task(model, self.ctx, t)  # the stored statistics are those of the stored sparse network
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes)}
        save_masks(folder / MASK, self.masks, metadata={**meta, "init": self.opts.init, "growth": self.opts.growth,
                                                        "update_frequency": str(self.every),
                                                        "lr": str(self.lr(t))})
        save_tensors(folder / OWNED, owned, metadata={**meta, "content": "values of the positions this task owns"})
        save_tensors(folder / STATE, task_state(model), metadata=meta)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        if Path(folder) != self.ctx.task_dir(t):
            raise ValueError(f"task {t} is stored in {self.ctx.task_dir(t)}, not {folder}")
        values, masks = self.chain(t)
        weights = {n: torch.where(masks[t][n], values[n], torch.zeros(())) for n in values}
        return assemble(self.ctx.cfg.model, self.ctx.tasks[t].num_classes, weights, load_tensors(folder / STATE),
                        folder / STATE)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"masks": [folder / MASK], "weights": [folder / OWNED], "state": [folder / STATE]}

    # ----- reports -----

    def task_report(self, t: int, folder: Path) -> dict:
        """Density of the stored mask (total and per layer), how much of it task t owns or reuses from earlier
        tasks, the fraction of the network used by tasks <= t, and the stored bytes."""
        _, masks = self.chain(t)
        mask = masks[t]
        used = union(masks[:t], mask)
        numel = sum(m.numel() for m in mask.values())
        active = sum(int(m.sum()) for m in mask.values())
        reused = sum(int((mask[n] & used[n]).sum()) for n in mask)
        covered = sum(int((mask[n] | used[n]).sum()) for n in mask)
        return {"masked_weights": numel, "active": active, "density": active / numel, "owned": active - reused,
                "reused": reused, "network_used_fraction": covered / numel,
                "mask_payload_bytes": packed_bytes(mask), "mask_bytes": (folder / MASK).stat().st_size,
                "owned_bytes": (folder / OWNED).stat().st_size, "state_bytes": (folder / STATE).stat().st_size,
                "layer_density": {n: float(m.float().mean()) for n, m in mask.items()},
                **trained_with(load_metadata(folder / MASK))}

    def run_report(self, reports: list[dict]) -> dict:
        return {
            "init": self.opts.init, "growth": self.opts.growth, "target_density": self.opts.density,
            "density_per_task": [r["density"] for r in reports],
            "update_frequency_per_task": [r.get("update_frequency") for r in reports],
            "lr_per_task": [r.get("lr") for r in reports],
            "owned_fraction_per_task": [r["owned"] / r["masked_weights"] for r in reports],
            "reused_fraction_per_task": [r["reused"] / max(r["active"], 1) for r in reports],
            "network_used_fraction": reports[-1]["network_used_fraction"] if reports else 0.0,
        }


METHOD = DST
