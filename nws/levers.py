"""Storage levers beyond coding (issue 9): change which indices a task stores, so that they code smaller.

- `keep_previous`: a prior for unchanged indices. A kernel keeps the previous task's index when that pool kernel is
  almost as near to its temporary kernel as the nearest one: ||w - m_prev||² <= (1 + margin) ||w - m_best||². The
  changes that buy the least distance are dropped, so the delta/near codes shrink (seed 004_ Algorithm 1 line 3:
  task t starts at the previous task's kernels, so most kernels are still at m_prev anyway).
- `sparsify`: seed 004_ §5.7, Eq. 5: a kernel selected fewer than sqrt(d) times in its layer (d = kernels in the
  layer) is "less important" and is replaced by one shared kernel near zero, the pool kernel of the smallest norm
  (the pools are frozen and shared, so no new zero kernel is added to them).
Both return new indices; the task model is then stored and rebuilt from them, so its accuracy is measured on them.
Measured on Fashion-MNIST (BENCHMARKS.md, Storage): `keep_previous` is the option `incremental.options.nws.keep_margin`;
`sparsify` cost about 30 accuracy points there (stem and small layers have few kernels per pool kernel, so most of
their kernels count as rare) and is not an option of the task loop.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def keep_previous(weight: torch.Tensor, pool: torch.Tensor, best: torch.Tensor, prev: torch.Tensor,
                  margin: float) -> torch.Tensor:
    """Indices where a kernel keeps `prev` unless `best` is nearer by more than the factor 1 + margin.

    weight: (N × d) temporary kernels; pool: (n × d); best, prev: (N,) indices (best = the nearest, Eq. 1)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if best.shape != prev.shape or best.numel() != weight.shape[0]:
        raise ValueError(f"{weight.shape[0]} kernels, but best has {best.numel()} and prev {prev.numel()} indices")
    w, p = weight.detach().double(), pool.detach().double()
    d_best = ((w - p[best]) ** 2).sum(1)
    d_prev = ((w - p[prev]) ** 2).sum(1)
    return torch.where(d_prev <= (1.0 + margin) * d_best, prev, best)


def zero_kernel(pool: torch.Tensor) -> int:
    """Index of the pool kernel of the smallest L2 norm: the shared stand-in for the zero kernel of §5.7."""
    return int(pool.detach().double().norm(dim=1).argmin())


@torch.no_grad()
def sparsify(indices: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Eq. 5's rarely selected kernels (h_u < sqrt(d)) replaced by the pool's zero kernel."""
    d = indices.numel()
    if d == 0:
        return indices.clone()
    h = torch.bincount(indices, minlength=pool.shape[0])
    rare = h[indices] < math.sqrt(d)
    return torch.where(rare, torch.full_like(indices, zero_kernel(pool)), indices)
