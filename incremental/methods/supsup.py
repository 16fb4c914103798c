"""SupSup, scenario GG: task id given (seed 002_; notes/algorithms.md §2.1, RAIVNLab/supsup MultitaskMaskConv).

- Frozen weights W shared by every task (stored once): `signed_constant` (official conv_init: W = sign · √2/√fan_in,
  fan_in mode; stored as its sign bits, 1 bit a weight, from which W is exact) or `backbone` (the plain pretrained
  backbone of the pretrain stage, copied into the method folder).
- Per task: one score tensor per conv and for the head (init kaiming_uniform(a=√5), official mask_init); the
  supermask keeps the top-k fraction of |scores| (k kept, official GetSubnet: the lowest int((1-k)·numel) are
  dropped) and passes the gradient straight through to |scores|; the layer computes with W ⊙ mask.
- Per-layer density k: the official ER rule k_l = min(0.5, s·(c_out + c_in)/(c_out·c_in·kh·kw)) with s = `er_scale`
  (the official `--sparsity` under `--er-sparsity`, swept over 1..32, higher = denser), or `uniform` k = `density`.
- BatchNorm per task (the official MultitaskNonAffineBN, the fix of supsup issue #11): running statistics are
  learned and stored per task; the affine parameters stay frozen (1/0 = non-affine for signed-constant weights,
  the backbone's for backbone weights). Before the task is stored its running statistics are recomputed for the
  final masks over the task's training split (`recalibrate_bn`, methods._bn_recal_supsup_dst): the running
  averages of training start from mean 0 / var 1 and follow masks that change every step, and after 18 steps
  (the demo at 2 epochs) layer4's running variance was 6-12x the final network's, every stored task at chance
  (50.0%) while the same masks with these statistics gave 72-100%.
- Head: masked like every other layer over frozen head weights (official: the GEMResNet head is a masked 1×1 conv;
  task t uses the first C_t rows), or a trained float head per task (`head: float`). `output_size` gives the masked
  head more rows than the task has classes, the official GNu `--output_size` (500 on PermutedMNIST with FC 1024-1024,
  experiments/GNu/MNISTPerm): the extra rows are superfluous neurons that every task's mask learns to keep low on
  its own inputs (the loss runs over all rows).
- Task inference (incremental.task_inference): SupSup's one-shot rule needs its GNu setting, superfluous rows AND
  small mask updates. On 8-10 permuted digits tasks (LeNet-300-100) it named the task of every batch with 100 rows
  and 45-88% with the 10 class rows; on 10 permuted Fashion-MNIST tasks (FC 1024-1024, 500 rows, 60 steps a task)
  it named 0% under Adam at the raised lr (2.7e-3, every score moves past its init range) and 100% under the GNu
  RMSprop at 1e-4, at the same task accuracy (BENCHMARKS.md). Our reading: with small updates each mask is its
  random start plus a task-specific change, and only the right task's change lowers the entropy at the centre of
  the simplex; large updates give every mask a shared, input-independent way to lower it, and the tasks that
  have most of it win every batch.
- Optimizer: the official Adam (lr 1e-3, weight decay 1e-4 on the scores) with CosineAnnealingLR over the epochs
  (`schedule: cosine`, which replaces incremental.milestones) or the loop's step schedule (`schedule: loop`); or
  the GNu runs' recipe, `optimizer: rmsprop` (lr 1e-4, no weight decay), `schedule: constant`, `mask: threshold`
  (scores >= 0, official FastMultitaskMaskConv), which the one-shot task inference needs (above). An
  unset `lr` is raised on a schedule too short for Adam's steps of ~lr to move a score across its init range
  (methods._adam_reach: 7.4e-3 at 18 steps a task, 3.2e-3 at the demo's 54, 1e-3 on the official 250 epochs).
- Task artifact: the masks bit-packed (incremental.masks) + the BN running statistics (+ the float head).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from incremental.masks import load_masks, packed_bytes, save_masks
from incremental.methods import Method, MethodOptions
from incremental.methods import _adam_reach as adam_reach
from incremental.methods._backbone import check_plain
from incremental.methods._bn_recal_supsup_dst import recalibrate_task
from incremental.stored import StoredTaskError, share_copy
from loaders import derive_seed
from nws.io import load_metadata, load_tensors, save_tensors

BACKBONE = "backbone.safetensors"
SIGNS = "signs.safetensors"
MASKS = "masks.safetensors"
STATE = "state.safetensors"
GAIN = math.sqrt(2.0)  # nn.init.calculate_gain("relu"), the official signed_constant gain
OFFICIAL_LR = 1e-3
OFFICIAL_GNU_LR = 1e-4  # the GNu runs' RMSprop (experiments/GNu/MNISTPerm/*/supsup_h.py)


class Options(MethodOptions):
    weights: Literal["signed_constant", "backbone"] = "signed_constant"
    density_rule: Literal["er", "uniform"] = "er"
    er_scale: float = Field(8.0, gt=0)  # s of the ER rule (official --sparsity with --er-sparsity)
    density: float = Field(0.5, gt=0, le=1)  # fraction kept in every layer under density_rule uniform
    head: Literal["mask", "float"] = "mask"
    output_size: int | None = Field(None, ge=1)  # rows of the masked head (official GNu --output_size); None: classes
    # how a score tensor becomes the mask: the top-k fraction of |scores| (official GetSubnet, the GG runs) or
    # scores >= 0 (official FastMultitaskMaskConv, the GNu runs; the density is then learned, `density_rule` unused)
    mask: Literal["top_k", "threshold"] = "top_k"
    optimizer: Literal["adam", "rmsprop"] = "adam"  # rmsprop: the GNu runs' RMSprop, lr 1e-4, no weight decay
    lr: float | None = Field(None, gt=0)  # None: Adam 1e-3 (official), raised on a short schedule
    # (methods._adam_reach); RMSprop 1e-4 (official GNu), as it is
    weight_decay: float = Field(1e-4, ge=0)  # Adam's (RMSprop's official call passes none)
    schedule: Literal["cosine", "loop", "constant"] = "cosine"  # constant: the GNu runs' --no_scheduler
    recalibrate_bn: bool = True  # store BN statistics recomputed for the final masks (False: the running averages)


def masked_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Every convolution and linear layer (the head `fc` included), by module name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def batchnorms(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def layer_density(shape: tuple[int, ...], opts: Options) -> float:
    """k_l, the fraction of the layer's weights its mask keeps (official main.py ER budget, capped at 0.5)."""
    if opts.density_rule == "uniform":
        return opts.density
    c_out, c_in, kernel = shape[0], shape[1], math.prod(shape[2:])
    return min(0.5, opts.er_scale * (c_out + c_in) / (c_out * c_in * kernel))


def kept(numel: int, k: float) -> int:
    """Entries a mask of density k keeps: all but the lowest int((1 - k) · numel) (official GetSubnet)."""
    return numel - int((1 - k) * numel)


def top_k_mask(scores: torch.Tensor, k: float) -> torch.Tensor:
    """The bool supermask: True at the kept(numel, k) largest |scores|."""
    flat = scores.detach().abs().flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[flat.topk(kept(flat.numel(), k)).indices] = True
    return mask.view(scores.shape)


class Supermask(nn.Module):
    """Parametrization W -> W ⊙ mask(scores): the forward uses the binary mask exactly, the backward sends the
    gradient of the mask straight through, to |scores| for top-k masks (official GetSubnet.backward), to the scores
    for threshold masks, scores >= 0 (official GetSubnetFast; `density` is then None)."""

    def __init__(self, shape: tuple[int, ...], density: float | None):
        super().__init__()
        self.density = density
        self.scores = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))  # official mask_init

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        a = self.scores if self.density is None else self.scores.abs()
        return weight * (self.mask().to(weight.dtype) + (a - a.detach()))

    def mask(self) -> torch.Tensor:
        if self.density is None:
            return self.scores.detach() >= 0
        return top_k_mask(self.scores, self.density)


def supermask_of(layer: nn.Module) -> Supermask | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return layer.parametrizations.weight[0]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise StoredTaskError(f"{path}: missing")
    return load_tensors(path)


class SupSup(Method):
    name = "supsup"
    Options = Options
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its Adam and cosine schedule
    recipe_keys = ("lr", "weight_decay", "schedule")

    def __init__(self, ctx):
        super().__init__(ctx)
        self._epoch, self._task = 0, 0

    # ---- the frozen weights, stored once ----
    @property
    def frozen_path(self) -> Path:
        return self.ctx.method_dir / (BACKBONE if self.opts.weights == "backbone" else SIGNS)

    def head_rows(self) -> int:
        return max(self.rows(t) for t in range(len(self.ctx.tasks)))

    def rows(self, t: int) -> int:
        """Outputs of task t's network: its classes, or `output_size` (the first rows are the classes)."""
        classes = self.ctx.tasks[t].num_classes
        if self.opts.output_size is None:
            return classes
        if self.opts.head != "mask":
            raise ValueError(f"incremental.options.supsup.output_size: superfluous neurons are rows of the masked "
                             f"head; head is {self.opts.head!r}")
        if self.opts.output_size < classes:
            raise ValueError(f"incremental.options.supsup.output_size {self.opts.output_size} is fewer than the "
                             f"{classes} classes of task {self.ctx.tasks[t].name}")
        return self.opts.output_size

    def prepare(self) -> None:
        if self.opts.weights == "backbone":
            stored = [t for t in range(len(self.ctx.tasks)) if (self.ctx.task_dir(t) / MASKS).is_file()]
            share_copy(check_plain(self.ctx), self.frozen_path, "weights", stored)
            return
        net = self.ctx.cfg.model.build(self.head_rows())
        if self.frozen_path.is_file():
            self._check_signs(net)
            return
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.cfg.seeds[0], 2020))
        signs = {name: torch.rand(layer.weight.shape, generator=gen) < 0.5
                 for name, layer in masked_layers(net).items()}
        save_masks(self.frozen_path, signs, metadata={"content": "signs of the signed-constant weights "
                                                      "(True = +), W = sign * sqrt(2) / sqrt(fan_in)"})

    def _check_signs(self, net: nn.Module) -> None:
        signs = load_masks(self.frozen_path)
        want = {name: tuple(layer.weight.shape) for name, layer in masked_layers(net).items()}
        got = {name: tuple(s.shape) for name, s in signs.items()}
        if got != want:
            raise ValueError(f"{self.frozen_path}: signs for layers {got}, but the configured network has {want}; "
                             "use another output folder")

    def shared_files(self) -> dict[str, list[Path]]:
        return {"frozen_weights": [self.frozen_path]}

    def frozen(self, num_classes: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({layer: W} for every masked layer, head rows cut to num_classes; {BN tensor name: value} to start from)."""
        net = self.ctx.cfg.model.build(num_classes)
        if self.opts.weights == "backbone":
            state = load_tensors(self.frozen_path)
            weights = {name: state[f"{name}.weight"] for name in masked_layers(net)}
            if weights["fc"].shape[0] < num_classes:
                raise ValueError(f"{self.frozen_path}: the backbone head has {weights['fc'].shape[0]} rows, a task "
                                 f"needs {num_classes}; use head: float")
            bn = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] in batchnorms(net)}
        else:
            signs = load_masks(self.frozen_path)
            weights = {name: (signs[name].float() * 2 - 1) * GAIN / math.sqrt(fan_in(tuple(s.shape)))
                       for name, s in signs.items()}
            bn = {}
            for name, m in batchnorms(net).items():  # non-affine: weight 1, bias 0, fresh statistics
                bn.update({f"{name}.weight": torch.ones_like(m.weight), f"{name}.bias": torch.zeros_like(m.bias),
                           f"{name}.running_mean": torch.zeros_like(m.running_mean),
                           f"{name}.running_var": torch.ones_like(m.running_var)})
        weights["fc"] = weights["fc"][:num_classes]
        return weights, bn

    # ---- training ----
    def setup_task(self, t: int) -> nn.Module:
        self._epoch, self._task = 0, t
        net = self.ctx.cfg.model.build(self.rows(t))
        weights, bn = self.frozen(self.rows(t))
        if self.opts.head == "mask" and getattr(net.fc, "bias", None) is not None:
            raise ValueError("SupSup's masked head has no bias; use a model without a head bias or head: float")
        with torch.no_grad():
            for name, layer in masked_layers(net).items():
                if name == "fc" and self.opts.head == "float":
                    continue  # a fresh float head, trained
                layer.weight.copy_(weights[name])
                layer.weight.requires_grad_(False)
                shape = tuple(layer.weight.shape)
                density = None if self.opts.mask == "threshold" else layer_density(shape, self.opts)
                parametrize.register_parametrization(layer, "weight", Supermask(shape, density))
            for name, m in batchnorms(net).items():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(m, key).copy_(bn[f"{name}.{key}"])
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return net

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        if self.opts.optimizer == "rmsprop":
            return torch.optim.RMSprop(groups, lr=self.lr(self._task))
        return torch.optim.Adam(groups, lr=self.lr(self._task), weight_decay=self.opts.weight_decay)

    def lr(self, t: int) -> float:
        """`lr` as given; unset, the official 1e-3 raised to what task t's schedule needs (methods._adam_reach);
        recipe "paper": incremental.lr."""
        if self.recipe == "paper":
            return self.inc.lr
        if self.opts.lr is not None:
            return self.opts.lr
        if self.opts.optimizer == "rmsprop":
            return OFFICIAL_GNU_LR
        factor = adam_reach.cosine if self.opts.schedule == "cosine" else None
        return adam_reach.adam_lr(OFFICIAL_LR, adam_reach.reach(self.ctx, t, factor))

    def before_step(self, model: nn.Module) -> None:
        """CosineAnnealingLR(T_max = epochs) stepped per epoch, as the official GG runs, or a constant lr, as the GNu
        runs (both replace the milestones; the official recipe only: "paper" keeps the loop's milestones)."""
        if self.recipe != "official" or self.opts.schedule == "loop" or self.optimizer is None:
            return
        factor = adam_reach.cosine(self._epoch, self.epochs()) if self.opts.schedule == "cosine" else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor

    def epochs(self) -> int:
        """T_max: the epochs of the task being trained (the loop's resolved schedule when it provides one as
        `ctx.schedule`: a step budget or a step floor sets them per task), else incremental.epochs."""
        return adam_reach.epochs(self.ctx, self._task)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self._epoch = epoch + 1

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {"supsup_epoch": torch.tensor(self._epoch)}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self._epoch = int(state["supsup_epoch"])

    # ---- the task artifact ----
    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        if self.opts.recalibrate_bn:
            recalibrate_task(model, self.ctx, t)  # the stored statistics are those of the stored masks
        masks, densities = {}, {}
        for name, layer in masked_layers(model).items():
            sm = supermask_of(layer)
            if sm is not None:
                masks[name], densities[name] = sm.mask().cpu(), sm.density
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes),
                "weights": self.opts.weights, "head": self.opts.head, "lr": str(self.lr(t))}
        save_masks(folder / MASKS, masks, metadata={**meta, "densities": json.dumps(densities)})
        state = {}
        for name, m in batchnorms(model).items():
            state.update({f"{name}.running_mean": m.running_mean, f"{name}.running_var": m.running_var})
        if self.opts.head == "float":
            state.update({f"fc.{k}": v for k, v in model.fc.state_dict().items()})
        save_tensors(folder / STATE, state, metadata=meta)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        num_classes = self.rows(t)
        masks, state = load_masks(folder / MASKS), read_state(folder / STATE)
        head = load_metadata(folder / STATE).get("head", "mask")
        net = self.ctx.cfg.model.build(num_classes)
        weights, bn = self.frozen(num_classes)
        with torch.no_grad():
            for name, layer in masked_layers(net).items():
                if name == "fc" and head == "float":
                    layer.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fc.")})
                    continue
                if name not in masks or masks[name].shape != layer.weight.shape:
                    raise StoredTaskError(f"{folder / MASKS}: no mask of shape {tuple(layer.weight.shape)} "
                                          f"for {name!r}")
                layer.weight.copy_(weights[name] * masks[name])
            for name, m in batchnorms(net).items():
                m.weight.copy_(bn[f"{name}.weight"])
                m.bias.copy_(bn[f"{name}.bias"])
                for key in ("running_mean", "running_var"):
                    if f"{name}.{key}" not in state:
                        raise StoredTaskError(f"{folder / STATE}: no {name}.{key}")
                    getattr(m, key).copy_(state[f"{name}.{key}"])
        return net.eval()

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"masks": [folder / MASKS], "state": [folder / STATE]}

    # ---- task inference (scenario GNu: task id unknown), over the stored masks ----
    def superposition(self, tasks: list[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """f(alphas, x) -> logits of the network whose every masked layer computes with W ⊙ Σ_i alphas_i M_i over
        the stored masks of `tasks` (official MultitaskMaskConv with task = -1; a float head is superposed the
        same way, Σ_i alphas_i fc_i). BatchNorm uses the batch's statistics (the official adaptor runs the model
        in train mode; the per-task running statistics belong to one task each)."""
        classes = {self.rows(i) for i in tasks}
        if len(classes) != 1:
            raise ValueError(f"superposed masks need tasks with one output count; tasks {tasks} have {classes}")
        num_classes = classes.pop()
        folders = [self.ctx.task_dir(i) for i in tasks]
        masks = [load_masks(f / MASKS) for f in folders]
        weights, bn = self.frozen(num_classes)
        stacked = {name: torch.stack([m[name] for m in masks]).float() for name in masks[0]}
        if "fc" not in stacked:  # float heads
            stacked["fc"] = torch.stack([read_state(f / STATE)["fc.weight"] for f in folders])
            weights["fc"] = torch.ones_like(stacked["fc"][0])
        net = self.ctx.cfg.model.build(num_classes)
        net.load_state_dict(bn, strict=False)
        net.train()

        def logits(alphas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            if stacked["fc"].device != x.device:  # moved once, to where the batch is
                net.to(x.device)
                for d in (stacked, weights):
                    d.update({k: v.to(x.device) for k, v in d.items()})
            params = {}
            for name, s in stacked.items():
                a = alphas.view(-1, *([1] * (s.dim() - 1)))
                params[f"{name}.weight"] = weights[name] * (a * s).sum(0)
            return torch.func.functional_call(net, params, (x,))

        return logits

    # ---- reports ----
    def task_report(self, t: int, folder: Path) -> dict:
        masks = load_masks(folder / MASKS)
        numel = sum(m.numel() for m in masks.values())
        ones = sum(int(m.sum()) for m in masks.values())
        return {"masked_weights": numel, "kept_weights": ones, "density": ones / max(numel, 1),
                "mask_payload_bytes": packed_bytes(masks), "bits_per_weight": 8 * packed_bytes(masks) / max(numel, 1),
                "layer_density": {name: float(m.float().mean()) for name, m in masks.items()},
                "lr": float(lr) if (lr := load_metadata(folder / STATE).get("lr")) else None}  # None: not recorded

    def run_report(self, reports: list[dict]) -> dict:
        numel = sum(r["masked_weights"] for r in reports)
        return {"weights": self.opts.weights, "head": self.opts.head, "density_rule": self.opts.density_rule,
                "er_scale": self.opts.er_scale, "density_per_task": [r["density"] for r in reports],
                "lr_per_task": [r.get("lr") for r in reports],
                "density": sum(r["kept_weights"] for r in reports) / max(numel, 1),
                "bits_per_weight": 8 * sum(r["mask_payload_bytes"] for r in reports) / max(numel, 1)}


METHOD = SupSup
