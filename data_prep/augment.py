"""Train/eval image transforms in plain torch (no torchvision), applied to whole batches after collation.

Two policies, as in the paper's benchmarks (seed 004_ §4, CPG/NWS recipes): *small* images (stored at most
64x64: digits, Fashion-MNIST, CIFAR) train with a random crop from a 4-pixel zero padding plus a horizontal flip
and evaluate as they are; *large* images (ImageNet, CUB-to-Sketches) train with random-resized-crop (scale
0.08-1, ratio 3/4-4/3, bilinear) plus flip and evaluate with a resize of the shorter side to size/0.875 and a
center crop. Every loader format feeds the same functions, so formats differ only in how pixels are stored.

A task of a family (permuted, rotated) has its transform (data_prep.task_transform) applied here too, at the
network's input size and before normalisation. Augmentation is refused for such a task: a random crop or flip moves
pixels, which undoes a fixed permutation, and a flipped image rotated by a degrees looks like one rotated by -a,
another task's angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.task_transform import TaskTransform

SMALL_MAX_SIDE = 64
EVAL_CROP_RATIO = 0.875  # 224/256
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def policy_for(stored_size: list[int] | None) -> str:
    """`small` for fixed-size images of at most 64x64, else `large` (also for variable sizes)."""
    return "small" if stored_size is not None and max(stored_size) <= SMALL_MAX_SIDE else "large"


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_crop_pad(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random HxW crop of the batch zero-padded by `pad` on each side (torchvision RandomCrop with
    padding=pad, fill 0), done for the whole batch with one gather over the flattened padded images."""
    n, c, h, w = x.shape
    wide = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)).reshape(n, c, -1)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    window = (torch.arange(h)[:, None] * wide + torch.arange(w)[None, :]).reshape(1, -1)
    index = (window + (oy * wide + ox)[:, None]).unsqueeze(1).expand(n, c, h * w)
    return torch.gather(xp, 2, index).view(n, c, h, w)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each sample with probability 1/2 (only the chosen samples are touched)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def rrc_boxes(h: int, w: int, n: int, gen: torch.Generator, scale=RRC_SCALE, ratio=RRC_RATIO) -> np.ndarray:
    """n crop boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop does: up to 10 tries of
    area fraction ~ U(scale) and log aspect ~ U(log ratio); if none fits, a center crop clamped to `ratio`."""
    tries = 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=gen, dtype=torch.float64))
    cw = torch.round(torch.sqrt(area * aspect)).long()
    ch = torch.round(torch.sqrt(area / aspect)).long()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    boxes = np.empty((n, 4), dtype=np.int64)
    for k in range(n):
        valid = torch.nonzero(ok[k])
        if len(valid):
            t = int(valid[0])
            bh, bw = int(ch[k, t]), int(cw[k, t])
        else:
            bh, bw = _fallback_box(h, w, ratio)
        top = int(u[k, 0] * (h - bh + 1))
        left = int(u[k, 1] * (w - bw + 1))
        boxes[k] = (top, left, bh, bw)
    return boxes


def _fallback_box(h: int, w: int, ratio) -> tuple[int, int]:
    in_ratio = w / h
    if in_ratio < min(ratio):
        return int(round(w / min(ratio))), w
    if in_ratio > max(ratio):
        return h, int(round(h * max(ratio)))
    return h, w


def random_resized_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop to size x size of a float NCHW batch (one bilinear interpolate per sample: crops
    differ in shape). A box that draws no valid crop falls back to the centre as torchvision does."""
    n, _, h, w = x.shape
    out = torch.empty(n, x.shape[1], size, size, dtype=torch.float32)
    for k, (top, left, bh, bw) in enumerate(rrc_boxes(h, w, n, gen)):
        out[k] = resize(x[k:k + 1, :, top:top + bh, left:left + bw], (size, size))[0]
    return out


def resize_center_crop(x: torch.Tensor, size: int, ratio: float = EVAL_CROP_RATIO) -> torch.Tensor:
    """Shorter side resized to round(size / ratio), then the central size x size crop (the eval transform of
    ImageNet-style training)."""
    h, w = x.shape[-2:]
    short = round(size / ratio)
    if min(h, w) != short:
        x = resize(x, (max(1, round(h * short / min(h, w))), max(1, round(w * short / min(h, w)))))
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def crop_to_size(image: np.ndarray, size: int, train: bool, gen: torch.Generator) -> np.ndarray:
    """Bring one variable-size HxWx3 uint8 image to size x size before collation (RRC for train, resize +
    center crop for eval); the rest of the transform then runs batched."""
    x = torch.tensor(image).permute(2, 0, 1)[None].float()
    x = random_resized_crop(x, size, gen) if train else resize_center_crop(x, size)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass
class BatchTransform:
    """uint8 NCHW batch -> normalised float32 NCHW: augmentation (when `augment`), then (x/255 - mean)/std
    with the unit's train-split statistics from the manifest. `cropped`: the large-image crop already happened
    per sample before collation (variable-size images), only the flip is left. `task_transform`: a family task's
    record, applied after the resize (or crop) to image_size and before normalisation; it excludes `augment`."""

    policy: str  # small | large
    image_size: int
    mean: list[float]
    std: list[float]
    augment: bool
    cropped: bool = False
    pad: int = 4
    task_transform: dict | None = None

    def __post_init__(self):
        self._task = None if self.task_transform is None else TaskTransform(self.task_transform)
        if self._task is not None and self.augment:
            kind = self._task.record["kind"]
            why = ("undoes the task's fixed pixel permutation" if kind == "permute" else
                   "turns an image rotated by a degrees into one that looks rotated by -a, another task's angle")
            raise ValueError(f"augmentation (random crop and flip) {why}: a {kind} task trains without it; set "
                             "incremental.augment: false in the config (augment=False for a loader)")
        std = torch.tensor(self.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std))[None, :, None, None]
        self._shift = (torch.tensor(self.mean, dtype=torch.float32) / std)[None, :, None, None]

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if self.policy == "small":
            if tuple(x.shape[-2:]) != size:
                x = resize(x.float(), size)
            if self.augment:
                x = random_flip(random_crop_pad(x, self.pad, gen), gen)
        elif self.cropped:
            x = random_flip(x, gen) if self.augment else x
        elif self.augment:
            x = random_flip(random_resized_crop(x.float(), self.image_size, gen), gen)
        else:
            x = resize_center_crop(x.float(), self.image_size)
        if self._task is not None:
            x = self._task(x.float())
        return x.float() * self._scale - self._shift
