"""The per-task pixel transform of a task family (data_prep.tasks kinds `permuted` and `rotated`), applied on the fly
by every loader: one copy of the source's images serves all tasks.

A task's record, stored in tasks.json and in its manifest entry:
- {"kind": "permute", "seed": s}: one fixed permutation of the H*W pixel positions, the same for every channel,
  `np.random.RandomState(s).permutation(H * W)` as SupSup's PermutedMNIST draws it (seed 002_,
  data/mnist.py: `np.random.seed(i + args.seed); np.random.permutation(784)`), so task i has seed `seed + i` and
  task 0 is permuted too, not the identity. The permutation is drawn for the size the network reads (after the
  resize to data.image_size), so the record does not depend on the stored size.
- {"kind": "rotate", "degrees": a}: the image rotated by a degrees counter-clockwise about its centre, size kept,
  nearest-neighbour sampling, the corners filled with black (pixel value 0): torchvision's `rotate` defaults that
  SupSup's RotatingMNIST uses (seed 002_, data/rotatingmnist.py), written with affine_grid + grid_sample.

Both run on the float batch at the network's input size, before normalisation: a per-channel (x - mean) / std
commutes with a pixel permutation, so SupSup's order (normalise, then permute) gives the same tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

KINDS = {"permute": "seed", "rotate": "degrees"}


def check_transform(record, where: str = "transform") -> dict:
    """A copy of `record` if it is a valid transform record, else a ValueError naming `where` and what was expected."""
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ValueError(f"{where}: expected {{'kind': 'permute', 'seed': S}} or {{'kind': 'rotate', 'degrees': A}}, "
                         f"got {record!r}")
    key = KINDS[record["kind"]]
    if set(record) != {"kind", key}:
        raise ValueError(f"{where}: a {record['kind']!r} transform has exactly the keys kind and {key}, got "
                         f"{sorted(record)}")
    value = record[key]
    if key == "seed" and (not isinstance(value, int | np.integer) or isinstance(value, bool)
                          or not 0 <= value < 2**32):
        raise ValueError(f"{where}: seed must be an integer in 0..2**32-1 (numpy's RandomState), got {value!r}")
    if key == "degrees" and (not isinstance(value, int | float) or isinstance(value, bool)
                             or not math.isfinite(value)):
        raise ValueError(f"{where}: degrees must be a finite number, got {value!r}")
    return {"kind": record["kind"], key: int(value) if key == "seed" else float(value)}


def same_effect(a: dict, b: dict) -> bool:
    """Whether two records transform every image alike (equal seeds; angles equal modulo 360)."""
    if a["kind"] != b["kind"]:
        return False
    if a["kind"] == "permute":
        return a["seed"] == b["seed"]
    return math.isclose((a["degrees"] - b["degrees"] + 180) % 360, 180, abs_tol=1e-9)


def describe(record: dict) -> str:
    """A short label: `perm 3` (seed 3) or `rot 36°`."""
    if record["kind"] == "permute":
        return f"perm {record['seed']}"
    return f"rot {record['degrees']:g}°"


def permutation(seed: int, pixels: int) -> torch.Tensor:
    """The pixel order of a permute record at `pixels` = H*W positions (int64): output position p shows input p'."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(pixels).astype(np.int64))


def permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> the same pixels rearranged by `perm` over H*W, every channel alike."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Float N x C x H x W rotated counter-clockwise (as displayed, rows downward) by `degrees` about the centre;
    nearest sampling, zeros outside (torchvision.transforms.functional.rotate's defaults)."""
    n, c, h, w = x.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # output pixel (u, v) in pixel units about the centre (v downward) samples input R(theta)^-1 applied to it; the
    # grid is in [-1, 1] per axis, so the off-diagonal terms carry the aspect ratio
    matrix = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(matrix.expand(n, 2, 3), [n, c, h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)


class TaskTransform:
    """A record made callable on float NCHW batches; the permutation is drawn once per image size."""

    def __init__(self, record: dict):
        self.record = check_transform(record)
        self._perm: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.record["kind"] == "rotate":
            return rotate(x, self.record["degrees"])
        pixels = x.shape[-2] * x.shape[-1]
        if pixels not in self._perm:
            self._perm[pixels] = permutation(self.record["seed"], pixels)
        return permute(x, self._perm[pixels])
