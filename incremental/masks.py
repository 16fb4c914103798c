"""Binary masks stored at 1 bit per entry (issue 6: masks bit-packed, never as float tensors).

A mask set {name: bool tensor} is written as one safetensors file of uint8 tensors, each the row-major flattening
of the mask packed 8 entries to a byte (numpy.packbits, big-endian bit order); the shapes go to the file's JSON
metadata. So the stored bytes are ceil(numel / 8) per mask plus the safetensors header, and the bits a method
expects can be checked against the file size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from incremental.stored import StoredTaskError
from nws.io import load_metadata, load_tensors, save_tensors

SHAPES = "mask_shapes"


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 entries a byte (the last byte zero-padded)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"a mask must be a bool tensor, got {mask.dtype}")
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().reshape(-1)))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of `shape` that `pack` turned into `packed`."""
    count = int(np.prod(shape)) if shape else 1
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"{packed.numel()} packed bytes ({packed.dtype}) cannot hold a mask of shape {tuple(shape)}")
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def save_masks(path: Path, masks: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write {name: bool mask} bit-packed to `path` (atomic)."""
    shapes = {name: list(m.shape) for name, m in masks.items()}
    meta = {**(metadata or {}), SHAPES: json.dumps(shapes)}
    save_tensors(path, {name: pack(m) for name, m in masks.items()}, metadata=meta)


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    """The bool masks `save_masks` wrote; a file that does not hold them is a StoredTaskError naming it."""
    try:
        shapes = json.loads(load_metadata(path)[SHAPES])
        packed = load_tensors(path)
        return {name: unpack(packed[name], tuple(shapes[name])) for name in shapes}
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        raise StoredTaskError(f"{path}: not a bit-packed mask file: {e}") from None


def packed_bytes(masks: dict[str, torch.Tensor]) -> int:
    """The payload bytes `save_masks` stores for these masks (without the header): Σ ceil(numel / 8)."""
    return sum((m.numel() + 7) // 8 for m in masks.values())


def union(masks: list[dict[str, torch.Tensor]], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise OR of mask sets (all False when there are none), shaped like `like`."""
    out = {n: torch.zeros(v.shape, dtype=torch.bool) for n, v in like.items()}
    for m in masks:
        for n in out:
            out[n] |= m[n]
    return out
