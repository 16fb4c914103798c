"""Piggyback (Mallya et al., ECCV 2018; notes/algorithms.md §4; arunmallya/piggyback) as a method of the task loop.

- Shared, stored once: the frozen plain backbone (methods._frozen_backbone), never trained.
- Per task: a real-valued mask m of the shape of every conv and linear weight (the head excluded; the official
  ElementWiseLinear masks Linear layers as ElementWiseConv2d masks convolutions), all entries `mask_init`
  (official `--mask_init 1s --mask_scale 1e-2`); the forward uses W ⊙ 1[m > threshold] (official
  DEFAULT_THRESHOLD 5e-3, the binarizer) and the backward passes the gradient straight through to m.
- BatchNorm (option `bn`): "train" (default), per task, trained from the pretrained statistics and stored in the
  artifact (the official `--train_bn`, as KSM and the NWS paper's baselines keep BN per task); its running
  statistics are re-estimated for the final masks after the last epoch (methods._frozen_backbone). "frozen": the
  official script's default without `--train_bn`, the pretrained BN shared and frozen (evaluation mode, no
  gradients). The head is new per task.
- Optimizer (recipe "official"): Adam (official `--mask_adam`) with lr 1e-4 for the masks (and BN, which the
  official mask optimizer holds too) and 1e-4 for the head, no weight decay; the loop's milestones scale both
  (official: ×0.1 every 15 of 30 epochs, i.e. `incremental.milestones: [15]`). A schedule too short for a mask entry
  to travel `min_travel` (4) times mask_init − threshold at these lrs gets the lrs left at their defaults scaled up
  by one factor (methods._mask_schedule: at the official lr nothing flips in fewer than 50 steps); thousands of
  steps keep them exactly. Recipe "paper" (incremental.methods): the shared SGD, the masks at lr_mask as given and
  BN and head at incremental.lr.
- Stored per task: `masks.safetensors`, 1 bit per masked weight (incremental.masks), and `state.safetensors`
  (BN + head). The rebuilt model is a plain network with conv weights W ⊙ mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from incremental.masks import load_masks, save_masks
from incremental.methods import MethodOptions
from incremental.methods import _frozen_backbone as fb
from incremental.methods._bn_stats import DEFAULT_BATCHES
from incremental.methods._mask_schedule import MIN_TRAVEL

MASKS = "masks.safetensors"


class PiggybackOptions(MethodOptions):
    threshold: float = 5e-3  # m > threshold keeps the weight
    mask_init: float = 1e-2  # every real-valued mask entry starts here
    lr_mask: float = Field(1e-4, gt=0)
    lr_bn: float | None = Field(None, gt=0)  # None: lr_mask
    lr_head: float = Field(1e-4, gt=0)
    # BatchNorm per task, trained and re-estimated at the end (official --train_bn), or the pretrained BN frozen
    bn: Literal["train", "frozen"] = "train"
    bn_batches: int = Field(DEFAULT_BATCHES, ge=0)  # batches that re-estimate BN statistics at the end; 0 = none
    # threshold gaps (mask_init - threshold) a mask entry must be able to travel over the task's schedule; a short
    # schedule scales the lrs left at their defaults up to allow it (methods._mask_schedule); 0 = never
    min_travel: float = Field(MIN_TRAVEL, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if not self.mask_init > self.threshold:
            raise ValueError(f"mask_init ({self.mask_init}) must exceed threshold ({self.threshold}), otherwise "
                             "every weight starts masked out")
        return self


class Binarize(torch.autograd.Function):
    """1[m > threshold] forward, the identity backward: the straight-through estimator of the official
    Binarizer."""

    @staticmethod
    def forward(ctx, real: torch.Tensor, threshold: float) -> torch.Tensor:
        return (real > threshold).to(real.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ElementMask(nn.Module):
    """The parametrization W -> W ⊙ 1[m > threshold] of one masked weight; m is the trainable real-valued mask."""

    def __init__(self, shape: torch.Size, init: float, threshold: float):
        super().__init__()
        self.real = nn.Parameter(torch.full(shape, init))
        self.threshold = threshold

    def binary(self) -> torch.Tensor:
        """The mask as stored: a bool tensor of the weight's shape."""
        return self.real.detach() > self.threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * Binarize.apply(self.real, self.threshold)


class Piggyback(fb.MaskMethod):
    name = "piggyback"
    Options = PiggybackOptions
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its Adam
    recipe_keys = ("lr_bn", "lr_head")

    def make_mask(self, layer: nn.Conv2d | nn.Linear) -> nn.Module:
        return ElementMask(layer.weight.shape, self.opts.mask_init, self.opts.threshold)

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes)}
        masks = {name: m.binary() for name, m in fb.mask_modules(model).items()}
        save_masks(folder / MASKS, masks, metadata={**meta, "threshold": str(self.opts.threshold)})
        fb.save_state(self.ctx, model, folder, meta)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        path = folder / MASKS
        masks = load_masks(path)
        return fb.rebuild_net(self.ctx, t, folder, {name: m.float() for name, m in masks.items()}, path)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"masks": [folder / MASKS], "state": [folder / fb.STATE]}

    def task_report(self, t: int, folder: Path) -> dict:
        """Density of the stored masks (share of backbone weights kept), per layer and overall, and the bits per
        masked weight measured from the mask file (its header included)."""
        masks = load_masks(folder / MASKS)
        weights = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        mask_bytes = (folder / MASKS).stat().st_size
        return {"weights": weights, "density": kept / weights, "mask_bytes": mask_bytes,
                "state_bytes": (folder / fb.STATE).stat().st_size, "bits_per_weight": 8 * mask_bytes / weights,
                "lr_scale": self.lr_scale(t),
                "layer_density": {name: float(m.float().mean()) for name, m in masks.items()}}

    def run_report(self, reports: list[dict]) -> dict:
        weights = sum(r["weights"] for r in reports)
        return {"density_per_task": [r["density"] for r in reports],
                "lr_scale_per_task": [r["lr_scale"] for r in reports],
                "bits_per_weight": 8 * sum(r["mask_bytes"] for r in reports) / max(weights, 1),
                "layer_density": {name: [r["layer_density"].get(name) for r in reports]
                                  for name in (reports[0]["layer_density"] if reports else {})}}


METHOD = Piggyback
