"""Masks of dynamic sparse training (seed 003_; CL-with-DST core.py, notes/algorithms.md §3): the initial density
per layer (`uniform` or Erdős–Rényi-Kernel), the cosine-decayed death rate, magnitude pruning and the four regrowth
rules. Every function keeps exact counts: pruning removes k active entries and regrowth adds exactly k inactive ones,
so a layer's density never changes after initialisation (the official code draws Bernoulli(p) masks at init and for
random regrowth, which keeps the density only in expectation).
"""

from __future__ import annotations

import math

import torch

GROWTH = ("random", "unfired", "momentum", "gradient")


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float, power: float = 1.0) -> dict[str, float]:
    """Per-layer densities ε·(Σ dims / Π dims)^power with ε solved so Σ density·numel = density·Σ numel; a layer whose
    density would exceed 1 is made dense and ε solved again over the rest (core.py `init`, sparse_init='ERK')."""
    dense: set[str] = set()
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n = math.prod(shape)
            if name in dense:
                rhs -= n * (1 - density)
            else:
                rhs += n * density
                raw[name] = (sum(shape) / n) ** power
                divisor += raw[name] * n
        if not raw:
            break
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps <= 1:
            break
        dense |= {name for name, p in raw.items() if p == top}
    return {name: 1.0 if name in dense else min(1.0, max(0.0, eps * raw[name])) for name in shapes}


def init_masks(shapes: dict[str, tuple[int, ...]], density: float, kind: str,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random bool masks: layer l gets round(d_l · numel_l) active entries placed uniformly, d_l = `density`
    (uniform) or the ERK density."""
    if kind == "uniform":
        per_layer = dict.fromkeys(shapes, density)
    elif kind == "ERK":
        per_layer = erk_densities(shapes, density)
    else:
        raise ValueError(f"unknown sparse init {kind!r}; expected 'uniform' or 'ERK'")
    masks = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        chosen = torch.randperm(n, generator=generator)[: round(per_layer[name] * n)]
        flat = torch.zeros(n, dtype=torch.bool)
        flat[chosen] = True
        masks[name] = flat.reshape(shape)
    return masks


def death_rate(step: int, total: int, start: float = 0.5, end: float = 0.005) -> float:
    """The pruning rate after `step` of `total` steps: cosine annealing from `start` to `end` (DeathCosineDecay,
    T_max = steps per epoch × epochs; held at `end` past T_max)."""
    s = min(max(step, 0), max(total, 1))
    return end + (start - end) * (1 + math.cos(math.pi * s / max(total, 1))) / 2


def prune_magnitude(weight: torch.Tensor, mask: torch.Tensor, rate: float) -> tuple[torch.Tensor, int]:
    """Drop the ceil(rate · active) active entries of smallest |w| (ties: lowest index first); returns the new mask
    and how many were dropped (core.py `magnitude_death`)."""
    active = int(mask.sum())
    k = min(active, math.ceil(rate * active))
    if k == 0:
        return mask.clone(), 0
    score = torch.where(mask, weight.detach().abs(), torch.full_like(weight, float("inf"))).flatten()
    drop = torch.argsort(score, stable=True)[:k]
    flat = mask.flatten().clone()
    flat[drop] = False
    return flat.reshape(mask.shape), k


def regrow(mask: torch.Tensor, k: int, mode: str, generator: torch.Generator, score: torch.Tensor | None = None,
           fired: torch.Tensor | None = None) -> torch.Tensor:
    """Activate exactly k inactive entries: `random` uniformly; `unfired` uniformly among the entries never active in
    this task (`fired`) first, then among the other inactive ones; `momentum` / `gradient` the largest |score|
    (the Adam ratio m/(√v+1e-8) or the momentum buffer / the gradient), ties by lowest index."""
    flat = mask.flatten().clone()
    free = (~flat).nonzero().flatten()
    if k > free.numel():
        raise ValueError(f"cannot regrow {k} entries: only {free.numel()} are inactive")
    if k == 0:
        return flat.reshape(mask.shape)
    if mode == "random":
        pick = free[torch.randperm(free.numel(), generator=generator)[:k]]
    elif mode == "unfired":
        unfired = fired.flatten()[free]
        first, rest = free[~unfired], free[unfired]
        first = first[torch.randperm(first.numel(), generator=generator)[:k]]
        rest = rest[torch.randperm(rest.numel(), generator=generator)[: k - first.numel()]]
        pick = torch.cat([first, rest])
    elif mode in ("momentum", "gradient"):
        if score is None:
            raise ValueError(f"{mode} regrowth needs a score tensor")
        s = score.detach().abs().flatten()[free]
        pick = free[torch.argsort(-s, stable=True)[:k]]
    else:
        raise ValueError(f"unknown growth mode {mode!r}; expected one of {GROWTH}")
    flat[pick] = True
    return flat.reshape(mask.shape)
