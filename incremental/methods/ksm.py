"""KSM, Kernel-wise Soft Mask (Yang et al., CVPR 2021; notes/algorithms.md §4; LYang-666/CVPR_2021_KSM).

- Shared, stored once: the frozen plain backbone (methods._frozen_backbone), never trained.
- Per task, per conv and linear layer (the head excluded): a real mask m of shape (out, in, 1, 1), one value per
  k×k kernel (a Linear weight's scalars are 1×1 kernels: m of its (out, in) shape, one value per weight), all
  `mask_init` (official 1e-2). With x = (m − threshold)·scale (official 5e-3, 1200):
  hard = 1[x ≥ 0], trained through sigmoid(x / temperature) (official 100; its Gumbel noise is off by default and
  not offered here); soft: a = m·(1 − hard) (no gradient), min-max normalised over the layer's a (the entries with
  a = 0, hard kernels included, stay 0); mask = hard + 0.5·a, so 1 on hard kernels and in [0, 0.5] elsewhere;
  W_eff = mask ⊙ W broadcast over the k×k kernel.
- BatchNorm: per task, trained with the masks (official `train_bn` default True) and stored, its running statistics
  re-estimated for the final masks after the last epoch (methods._frozen_backbone); option `bn: frozen` keeps the
  pretrained BN (train_bn False). The head is new per task.
- Optimizer (recipe "official"; "paper": the shared SGD with the mask lr kept, seed 001_ App. 5): Adam, lr 2e-4 for
  the masks and BN (one official optimizer) and 2e-4 for the head, no weight decay. The official cosine schedule
  (hard-coded 30-epoch horizon) is replaced by the loop's milestones. A schedule too short for a mask entry to
  travel `min_travel` (4) times mask_init − threshold at these lrs gets the lrs left at their defaults scaled up by
  one factor (methods._mask_schedule: at the official lr no kernel turns soft in fewer than 25 steps); thousands
  of steps keep them exactly.
- Stored per task: `kernel_masks.safetensors`, the hard part at 1 bit per kernel (incremental.masks);
  `soft.safetensors`, the soft values of the kernels whose hard bit is 0 only (row-major order), at `soft_dtype`
  (float32 by default: the official code's precision, so the rebuilt model is the trained one exactly; float16 halves
  it, the training forward then uses the same rounded values); `state.safetensors` (BN + head).
  Bits per kernel = 1 + (32 or 16) × the share of soft kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from safetensors import safe_open
from torch import nn

from incremental.masks import load_masks, save_masks
from incremental.methods import MethodOptions
from incremental.methods import _frozen_backbone as fb
from incremental.methods._bn_stats import DEFAULT_BATCHES
from incremental.methods._mask_schedule import MIN_TRAVEL
from incremental.stored import StoredTaskError
from nws.io import load_metadata, load_tensors, save_tensors

MASKS = "kernel_masks.safetensors"
SOFT = "soft.safetensors"
SOFT_WEIGHT = 0.5  # mask = hard + 0.5·a (official)
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class KSMOptions(MethodOptions):
    threshold: float = 5e-3
    mask_init: float = 1e-2
    scale: float = Field(1200.0, gt=0)  # official Beta
    temperature: float = Field(100.0, gt=0)
    lr_mask: float = Field(2e-4, gt=0)
    lr_bn: float | None = Field(None, gt=0)  # None: lr_mask
    lr_head: float = Field(2e-4, gt=0)
    soft_dtype: Literal["float32", "float16"] = "float32"
    # BatchNorm per task, trained and re-estimated at the end (official --train_bn), or the pretrained BN frozen
    bn: Literal["train", "frozen"] = "train"
    bn_batches: int = Field(DEFAULT_BATCHES, ge=0)  # batches that re-estimate BN statistics at the end; 0 = none
    # threshold gaps (mask_init - threshold) a mask entry must be able to travel over the task's schedule; a short
    # schedule scales the lrs left at their defaults up to allow it (methods._mask_schedule); 0 = never
    min_travel: float = Field(MIN_TRAVEL, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.mask_init < self.threshold:
            raise ValueError(f"mask_init ({self.mask_init}) must be at least threshold ({self.threshold}), otherwise "
                             "every kernel starts soft with the same value, which normalises to 0")
        return self


class KernelStep(torch.autograd.Function):
    """hard = 1[x ≥ 0] forward; the gradient of sigmoid(x / temperature) backward (the official Gumbel-sigmoid
    straight-through estimator without noise; its forward is the same step in training and evaluation)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.temperature = temperature
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


class KernelMask(nn.Module):
    """The parametrization W -> mask ⊙ W of one masked weight, mask = hard + 0.5·(normalised soft part)."""

    def __init__(self, weight_shape: torch.Size, opts: KSMOptions):
        super().__init__()
        kernels = (*weight_shape[:2], *(1,) * (len(weight_shape) - 2))  # (out, in, 1, 1) for a conv, (out, in)
        self.real = nn.Parameter(torch.full(kernels, opts.mask_init))
        self.threshold, self.scale, self.temperature = opts.threshold, opts.scale, opts.temperature
        self.soft_dtype = DTYPES[opts.soft_dtype]

    def value(self) -> torch.Tensor:
        """The kernel mask (out, in, 1, 1): 1 on hard kernels, the soft value in [0, 0.5] on the others."""
        hard = KernelStep.apply((self.real - self.threshold) * self.scale, self.temperature)
        a = torch.where(hard.detach() > 0, torch.zeros_like(self.real), self.real.detach())
        lo = a.min()
        span = (a.max() - lo).clamp_min(torch.finfo(a.dtype).tiny)
        soft = torch.where(a != 0, (a - lo) / span, torch.zeros_like(a))
        soft = (SOFT_WEIGHT * soft).to(self.soft_dtype).to(a.dtype)
        return hard + soft

    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(hard bits (out, in) as bool, the soft values of the kernels whose bit is 0, at the stored dtype)."""
        with torch.no_grad():
            mask = self.value().reshape(self.real.shape[:2])
            hard = (self.real.detach() - self.threshold).reshape(mask.shape) * self.scale >= 0
        return hard, mask[~hard].to(self.soft_dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.value()


def kernel_scales(hard: dict[str, torch.Tensor], soft: dict[str, torch.Tensor], source: Path) -> dict:
    """{layer: the (out, in) float mask, one value per kernel} from the stored hard bits and soft values."""
    out = {}
    for name, bits in hard.items():
        values = soft.get(name)
        if values is None or values.dim() != 1 or values.numel() != int((~bits).sum()):
            got = None if values is None else tuple(values.shape)
            raise StoredTaskError(f"{source}: soft values {name!r} of shape {got}, expected ({int((~bits).sum())},) "
                                  "(one per kernel whose hard bit is 0)")
        mask = torch.ones(bits.shape)
        mask[~bits] = values.float()
        out[name] = mask
    return out


class KSM(fb.MaskMethod):
    name = "ksm"
    Options = KSMOptions
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its Adam
    recipe_keys = ("lr_bn", "lr_head")

    def make_mask(self, layer: nn.Conv2d | nn.Linear) -> nn.Module:
        return KernelMask(layer.weight.shape, self.opts)

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes)}
        parts = {name: m.stored() for name, m in fb.mask_modules(model).items()}
        save_masks(folder / MASKS, {name: hard for name, (hard, _) in parts.items()}, metadata=meta)
        save_tensors(folder / SOFT, {name: soft for name, (_, soft) in parts.items()},
                     metadata={**meta, "soft_dtype": self.opts.soft_dtype, "content": "soft values of hard-0 kernels"})
        fb.save_state(self.ctx, model, folder, meta)

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        hard, soft = load_masks(folder / MASKS), load_tensors(folder / SOFT)
        return fb.rebuild_net(self.ctx, t, folder, kernel_scales(hard, soft, folder / SOFT), folder / MASKS)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"masks": [folder / MASKS], "soft": [folder / SOFT], "state": [folder / fb.STATE]}

    def task_report(self, t: int, folder: Path) -> dict:
        """The official 'soft factor ratio' (share of soft kernels), per layer and overall, and the bits per kernel
        and per backbone weight measured from the mask and soft files (headers included)."""
        hard = load_masks(folder / MASKS)
        with safe_open(str(fb.backbone_path(self.ctx)), framework="pt") as f:
            weights = sum(_numel(f.get_slice(f"{name}.weight").get_shape()) for name in hard)
        kernels = sum(m.numel() for m in hard.values())
        soft = sum(int((~m).sum()) for m in hard.values())
        mask_bytes, soft_bytes = (folder / MASKS).stat().st_size, (folder / SOFT).stat().st_size
        return {"kernels": kernels, "weights": weights, "soft_kernels": soft, "soft_fraction": soft / kernels,
                "soft_dtype": load_metadata(folder / SOFT).get("soft_dtype"), "mask_bytes": mask_bytes,
                "soft_bytes": soft_bytes, "state_bytes": (folder / fb.STATE).stat().st_size,
                "bits_per_kernel": 8 * (mask_bytes + soft_bytes) / kernels,
                "bits_per_weight": 8 * (mask_bytes + soft_bytes) / weights, "lr_scale": self.lr_scale(t),
                "layer_soft_fraction": {name: float((~m).float().mean()) for name, m in hard.items()}}

    def run_report(self, reports: list[dict]) -> dict:
        kernels = sum(r["kernels"] for r in reports)
        stored = sum(r["mask_bytes"] + r["soft_bytes"] for r in reports)
        return {"soft_fraction_per_task": [r["soft_fraction"] for r in reports],
                "lr_scale_per_task": [r["lr_scale"] for r in reports],
                "bits_per_kernel": 8 * stored / max(kernels, 1),
                "bits_per_weight": 8 * stored / max(sum(r["weights"] for r in reports), 1),
                "layer_soft_fraction": {name: [r["layer_soft_fraction"].get(name) for r in reports]
                                        for name in (reports[0]["layer_soft_fraction"] if reports else {})}}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


METHOD = KSM
