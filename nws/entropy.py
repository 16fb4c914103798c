"""Information limits of a task's stored indices (issue 9): what `nws.codec` can at best reach.

`empirical_entropy_bits` is the order-0 limit of the `entropy` mode (each layer coded with its own histogram);
`conditional_entropy_bits` is the limit of coding a task given the previous task's index at the same kernel,
the context the `delta` mode exploits. Both ignore the cost of describing the model (the histograms)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def as_index_array(name: str, values) -> np.ndarray:
    """One layer's indices as a 1-D int64 numpy array; a clear error naming the layer otherwise."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"layer {name!r}: indices must be 1-D, got shape {tuple(values.shape)}")
    if values.dtype.kind not in "iu":
        raise ValueError(f"layer {name!r}: indices must be integers, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


def _entropy_of_counts(counts: np.ndarray) -> float:
    """Total bits, sum(c * log2(N / c)), of coding N = sum(counts) symbols at their empirical frequencies."""
    counts = counts[counts > 0].astype(np.float64)
    total = counts.sum()
    return float((counts * np.log2(total / counts)).sum()) if total else 0.0


def empirical_entropy_bits(idx: Mapping[str, torch.Tensor]) -> float:
    """Sum over layers of len_l * H_l, H_l the entropy of layer l's index histogram (order 0)."""
    total = 0.0
    for name, values in idx.items():
        x = as_index_array(name, values)
        if x.size:
            _, counts = np.unique(x, return_counts=True)
            total += _entropy_of_counts(counts)
    return total


def conditional_entropy_bits(idx: Mapping[str, torch.Tensor], prev: Mapping[str, torch.Tensor]) -> float:
    """Sum over layers of len_l * H(cur | prev at the same position) = len_l * (H(prev, cur) - H(prev))."""
    check_same_layers({name: len(values) for name, values in idx.items()}, prev)
    total = 0.0
    for name, values in idx.items():
        cur, before = as_index_array(name, values), as_index_array(name, prev[name])
        if cur.size:
            b, c = before - before.min(), cur - cur.min()
            _, pair_counts = np.unique(b * (int(c.max()) + 1) + c, return_counts=True)
            _, prev_counts = np.unique(b, return_counts=True)
            total += _entropy_of_counts(pair_counts) - _entropy_of_counts(prev_counts)
    return max(total, 0.0)


def check_same_layers(lengths: Mapping[str, int], prev: Mapping[str, torch.Tensor]) -> None:
    """`prev` must hold exactly the layers in `lengths` ({layer: number of kernels}), each as long."""
    missing, extra = [k for k in lengths if k not in prev], [k for k in prev if k not in lengths]
    if missing or extra:
        raise ValueError(f"prev does not hold the same layers: missing {missing}, extra {extra}")
    for name, n_cur in lengths.items():
        n_prev = len(prev[name])
        if n_cur != n_prev:
            raise ValueError(f"layer {name!r}: {n_cur} indices but prev has {n_prev}")
