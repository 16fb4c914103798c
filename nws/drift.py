"""How far pool kernels and temporary kernels moved, as rigorous float64 bounds (issue 20): the geometry that lets
`nws.search.SearchCache` keep indices while the pool itself moves, as in pool distillation (Eq. 4, EMA decay 0.99).

A row w compared at time t with pool P_t has nearest kernel i and a lower bound l2 on ||w - P_t[k]|| for every
k != i. If since then w moved by δ and kernel k by ε_k(t→now), the triangle inequality gives
||w' - P_now[k]|| >= l2 - δ - ε_k(t→now), while ||w' - P_now[i]|| is computed directly. The movements are measured
from one reference pool P_ref (the pool of the cache's last full search): ε(t→now) <= ε(ref→t) + ε(ref→now), so
a row keeps l2 - max ε(ref→t) (its budget, fixed when it was compared) and every call subtracts δ and
max ε(ref→now). Kernels that jumped (dead-kernel restarts, any move far beyond the typical one) would spoil that
max for every row, so they are left out of it and compared with each row directly: N × r distances for r jumped
kernels, and a restart only invalidates the rows it can take.

Rounding. Every distance here is computed in float64 from fp32 inputs: the difference of two fp32 numbers is zero
or at least 2**-149 in magnitude and rounds with relative error u = 2**-53 (exact in most cases), so no square
underflows, and the sum of d squares and its sqrt are within (d + 3)·u of the true norm for any summation order
(Higham §3.1). `REL` doubles that and more; `down`/`up` step one float64 past each correctly rounded result.
"""

from __future__ import annotations

import math

import torch

JUMP = 8.0  # a kernel that moved more than JUMP × the median movement since P_ref is compared directly
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
    """The reference pool P_ref and the set J of kernels that jumped since it (J only grows until the next full
    search, so a kernel outside J now was outside J whenever a row was compared: the budgets stay valid)."""

    def __init__(self, pool: torch.Tensor):
        self.ref = pool.clone()
        self.jumped = torch.zeros(pool.shape[0], dtype=torch.bool, device=pool.device)
        self.moved = False  # True once any call saw a pool different from P_ref

    def static(self, pool: torch.Tensor) -> bool:
        """True while every pool seen since P_ref equals it (the fixed-pool shortcut of issue 2 holds)."""
        if not self.moved and not torch.equal(pool, self.ref):
            self.moved = True
        return not self.moved

    def update(self, pool: torch.Tensor) -> torch.Tensor:
        """ε_max(ref→now), an upper bound on how far any kernel outside J moved since P_ref (float64, 0-dim),
        after adding to J the kernels that moved more than JUMP × the median (and any non-finite one)."""
        eps = norm_hi(pool, self.ref)
        tau = JUMP * eps.nan_to_num(nan=math.inf).median()
        self.jumped |= ~eps.isfinite() | (eps > tau)
        return eps.masked_fill(self.jumped, 0.0).amax()

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
