"""Initial pools (seed 004_ §4.2): random, or k-means over the kernels of a given (warm-start) network.

The paper starts pools at random and distils them during pretraining (nws.distill). Starting from k-means over a
trained network's kernels is the cheaper warm start: the pool then already quantises those kernels well.
"""

from __future__ import annotations

import torch

from nws.search import nearest

POOL_INITS = ("normal", "kmeans", "sample")


def init_pool(kernels: torch.Tensor, n: int, method: str = "normal",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A pool of n kernels for a layer whose temporary kernels are `kernels` (N × d)."""
    kernels = kernels.detach().float().cpu()
    if method == "normal":
        return torch.randn(n, kernels.shape[1], generator=generator)
    if method == "sample":
        return sample_kernels(kernels, n, generator)
    if method == "kmeans":
        return kmeans(kernels, n, generator=generator)
    raise ValueError(f"unknown pool init {method!r}; valid: {', '.join(POOL_INITS)}")


def sample_kernels(kernels: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n kernels drawn without replacement (with replacement, plus tiny noise, when there are fewer than n)."""
    N = kernels.shape[0]
    if N >= n:
        return kernels[torch.randperm(N, generator=generator)[:n]].clone()
    picks = torch.randint(N, (n,), generator=generator)
    noise = 1e-3 * kernels.std().clamp_min(1e-8) * torch.randn(n, kernels.shape[1], generator=generator)
    return kernels[picks] + noise


def quantisation_error(kernels: torch.Tensor, pool: torch.Tensor) -> float:
    """Mean squared distance from each kernel to its nearest pool kernel (the Eq. 2 term at the optimum)."""
    kernels = kernels.detach().float()
    pool = pool.detach().float().to(kernels.device)
    return float(((kernels - pool[nearest(kernels, pool)]) ** 2).sum(1).mean())


def kmeans_plus_plus(kernels: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ∝ D(x)²."""
    N = kernels.shape[0]
    centres = torch.empty(n, kernels.shape[1])
    centres[0] = kernels[torch.randint(N, (1,), generator=generator)]
    d2 = ((kernels - centres[0]) ** 2).sum(1)
    for i in range(1, n):
        total = d2.sum()
        if total <= 0:  # every kernel already is a centre: fill the rest by sampling
            centres[i:] = sample_kernels(kernels, n - i, generator)
            break
        pick = torch.multinomial(d2 / total, 1, generator=generator)
        centres[i] = kernels[pick]
        d2 = torch.minimum(d2, ((kernels - centres[i]) ** 2).sum(1))
    return centres


def kmeans(kernels: torch.Tensor, n: int, iters: int = 25, max_points: int = 200_000,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on (at most `max_points` of) the kernels; an emptied cluster is
    re-seeded at the point farthest from its centre, so every pool kernel stays in use."""
    kernels = kernels.detach().float().cpu()
    if kernels.shape[0] > max_points:
        kernels = kernels[torch.randperm(kernels.shape[0], generator=generator)[:max_points]]
    if kernels.shape[0] <= n:
        return sample_kernels(kernels, n, generator)
    centres = kmeans_plus_plus(kernels, n, generator)
    for _ in range(iters):
        assign = nearest(kernels, centres)
        counts = torch.bincount(assign, minlength=n).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, kernels)
        moved = sums / counts.clamp_min(1).unsqueeze(1)
        empty = counts == 0
        if empty.any():
            far = ((kernels - centres[assign]) ** 2).sum(1).topk(int(empty.sum())).indices
            moved[empty] = kernels[far]
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres
