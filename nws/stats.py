"""How a task uses its pools (seed 004_ §5.7, appendix §6 of 001_): utilisation, layer sparsity, selection rates."""

from __future__ import annotations

import math

import torch


def kernel_utilisation(indices: torch.Tensor, pool_size: int) -> float:
    """KUR = U / n: the fraction of the pool's kernels selected at least once by the layer (§5.7)."""
    return torch.unique(indices).numel() / pool_size if indices.numel() else 0.0


def layer_sparsity(indices: torch.Tensor) -> float:
    """LS = Σ_u h_u / d over the unique kernels selected fewer than sqrt(d) times (Eq. 5), d = kernels in the layer:
    the share of the layer built from rarely selected kernels, which could be set to zero."""
    d = indices.numel()
    if d == 0:
        return 0.0
    h = torch.bincount(indices.flatten())
    h = h[h > 0]
    return float(h[h < math.sqrt(d)].sum()) / d


def selection_rates(indices: torch.Tensor, pool_size: int) -> torch.Tensor:
    """SR_i = h_i / d for every pool index i (appendix §6: the per-layer index distributions)."""
    d = max(indices.numel(), 1)
    return torch.bincount(indices.flatten(), minlength=pool_size).double() / d


def task_stats(indices: dict[str, torch.Tensor], pool_sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """{layer: {"kur": ..., "layer_sparsity": ..., "kernels": d}} for one task."""
    return {
        name: {
            "kur": kernel_utilisation(idx, pool_sizes[name]),
            "layer_sparsity": layer_sparsity(idx),
            "kernels": int(idx.numel()),
        }
        for name, idx in indices.items()
    }
