"""How far pool kernels and temporary kernels moved, as rigorous float64 bounds (issue 20): the geometry that lets
`nws.cache.SearchCache` keep indices while the pool itself moves, as in pool distillation (Eq. 4, EMA decay 0.99).

A row w compared at time t with pool P_t has nearest kernel i and a lower bound l2 on ||w - P_t[k]|| for every
k != i (its budget). If since then w moved by δ and kernel k by ε_k(t→now), the triangle inequality gives
||w' - P_now[k]|| >= l2 - δ - ε_k(t→now) >= l2 - δ - max_k ε_k(t→now), while ||w' - P_now[i]|| is computed
directly (it is at most d1 + δ + ε_i: the test is at least as strong as 2δ + ε_i + ε_max < d2 - d1). Pools are
small (n × d) next to the rows, so the cache keeps the last HISTORY pools it saw and every row measures the drift
from its own pool: no drift is counted twice, as it would be through one shared reference
(ε(t→now) <= ε(ref→t) + ε(ref→now)): that cut the rows searched in the distillation run of tests/nws/
test_search_drift.py from 41% to 24% a step. Kernels that jumped (dead-kernel restarts, any move far beyond the
typical one) would spoil that max for every row, so they are left out of it and compared with each row directly:
N × r distances for r jumped kernels, and a restart only invalidates the rows it can take.

Rounding. Every distance here is computed in float64 from fp32 inputs: the difference of two fp32 numbers is zero
or at least 2**-149 in magnitude and rounds with relative error u = 2**-53 (exact in most cases), so no square
underflows, and the sum of d squares and its sqrt are within (d + 3)·u of the true norm for any summation order
(Higham §3.1). `rel` more than doubles that; `down`/`up` step one float64 past each correctly rounded result.
"""

from __future__ import annotations

import math

import torch

JUMP = 8.0  # a kernel that moved more than JUMP × the median movement since a row's pool is compared directly
HISTORY = 32  # pools kept per cache: a row compared more than this many pool moves ago is searched again
CHUNK = 4096  # rows per block of the direct comparison with jumped kernels


def down(x: torch.Tensor) -> torch.Tensor:
    """The next float64 towards -inf: a lower bound on a value whose correctly rounded result is x."""
    return torch.nextafter(x, x.new_tensor(-math.inf))


def up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, x.new_tensor(math.inf))


def rel(d: int) -> float:
    """Relative error bound of a float64 L2 distance between fp32 vectors of dimension d, with slack."""
    return (d + 8) * 2.0**-52


def norm_hi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, an upper bound (float64) on the true ||a_r - b_r|| of two fp32 (N, d) tensors; NaN stays NaN."""
    diff = a.double() - b.double()
    return up(torch.einsum("ij,ij->i", diff, diff).sqrt() * (1 + rel(a.shape[1])))


def cdist_lo(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A lower bound (float64, N × r) on the true distances from the rows of x to those of p."""
    r = torch.cdist(x.double(), p.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return down(r * (1 - rel(x.shape[1])))


class PoolDrift:
    """The pools a cache's rows were compared with: the last `HISTORY` distinct ones (a pool is n × d, small next
    to the N rows), so every row measures the drift since its own comparison, ε(t→now), not since one shared
    reference. A row whose pool left the history is searched again."""

    def __init__(self, pool: torch.Tensor):
        self.ref = pool.clone()  # the pool of the last full search
        self.pools = pool.new_empty((HISTORY, *pool.shape))
        self.pools[0] = pool
        self.stamps = torch.full((HISTORY,), -1, dtype=torch.long)  # which pool each slot holds (-1: none)
        self.stamps[0] = 0
        self.latest = 0  # the stamp of the newest pool
        self.moved = False  # True once any call saw a pool different from `ref`
        self.jumped = torch.zeros(pool.shape[0], dtype=torch.bool, device=pool.device)

    def static(self, pool: torch.Tensor) -> bool:
        """True while every pool seen since the full search equals it (the fixed-pool shortcut of issue 2)."""
        if not self.moved and not torch.equal(pool, self.ref):
            self.moved = True
        return not self.moved

    def push(self, pool: torch.Tensor) -> int:
        """Record `pool` as the newest (unless it is the newest already); returns the stamp that left the history
        (-1 if none)."""
        if torch.equal(pool, self.pools[self.latest % HISTORY]):
            return -1
        self.latest += 1
        slot = self.latest % HISTORY
        gone = int(self.stamps[slot])
        self.pools[slot] = pool
        self.stamps[slot] = self.latest
        return gone

    def leaving_next(self, when: torch.Tensor) -> torch.Tensor:
        """True for the rows whose pool leaves the history at the next move."""
        return when <= self.latest + 1 - HISTORY

    def update(self, pool: torch.Tensor, when: torch.Tensor) -> torch.Tensor:
        """Per row compared with pool stamp `when` (float64): an upper bound on how far any kernel outside the
        jumped set J moved since then. J (left in `jumped`) holds the kernels that moved more than JUMP × the
        median since some row's pool, and any non-finite one: every row is compared with them directly."""
        slot = when % HISTORY
        slots = torch.bincount(slot, minlength=HISTORY).nonzero().squeeze(1)  # the slots in use (no sort of N rows)
        n, d = pool.shape
        eps = norm_hi(pool.expand(slots.numel(), n, d).reshape(-1, d), self.pools[slots].reshape(-1, d)).view(-1, n)
        tau = JUMP * eps.nan_to_num(nan=math.inf).median(1, keepdim=True).values
        self.jumped = (~eps.isfinite() | (eps > tau)).any(0)
        most = torch.zeros(HISTORY, dtype=torch.float64, device=pool.device)
        most[slots] = eps.masked_fill(self.jumped, 0.0).amax(1)
        return most[slot]
    def nearest_jumped_lo(self, x: torch.Tensor, pool: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Per row of x, a lower bound on its distance to the jumped kernels other than its own index `own`
        (inf when none)."""
        jumped = self.jumped.nonzero().squeeze(1)
        out = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
        if jumped.numel() == 0:
            return out
        kernels = pool[jumped]
        for a in range(0, x.shape[0], CHUNK):
            dist = cdist_lo(x[a:a + CHUNK], kernels)
            dist.masked_fill_(jumped[None, :] == own[a:a + CHUNK, None], math.inf)
            out[a:a + CHUNK] = dist.amin(1)
        return out
