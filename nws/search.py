"""Nearest-kernel search, Eq. 1 of seed 004_: k_i = NWS(w; M), i = argmin_i ||w - k_i||_2.

The official code (notes/algorithms.md §1.1) runs `torch.cdist(W, M)` to every pool kernel and takes the argmin:
it writes the whole (kernels × pool) distance matrix. Here the scores ||p||² - 2 w·p are computed chunk by chunk
with one `addmm` (the constant ||w||² does not change the argmin), so the extra memory is at most chunk × n
distances, never the full matrix. All arithmetic is fp32, whatever the autocast or matmul-precision settings.

Exactness. The expanded formula has rounding error, so the result is defined as, and equal to, the brute force
`torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)` on the fp32 inputs, ties to
the lowest index. For every row the best and second-best scores v1 < v2 are kept; with u = 2**-24 the rounding
error of a score is at most γ(d+3)·(||p||² + 2|w|·|p|), and that of the reference's squared distance at most
γ(d+2)·D (plus one rounding of its sqrt). If the gap v2 - v1 exceeds the sum of these bounds (`_certified`),
every other pool kernel is strictly farther in the reference's own rounded arithmetic, so its argmin is ours.
The rare rows below the bound (near-ties, duplicated pool kernels, non-finite values) are recomputed with the
reference itself. The same bounds give each row a conservative margin: how far its temporary kernel may move
before its nearest pool kernel can change (triangle inequality), which `SearchCache` uses to skip the search
for kernels that moved less than that since they were last compared (issue 2, "one exact shortcut").
"""

from __future__ import annotations

import contextlib
import math

import torch

U = 2.0**-24  # unit roundoff of fp32
TINY = 2.0**-149  # smallest fp32 subnormal: bounds the absolute error of an underflowing operation
CHUNK_BYTES = 2 * 2**20  # scores buffer per chunk: chunk × n fp32 values (fits a core's L2 cache)


def _gamma(m: int) -> float:
    """Higham's γ_m = m·u / (1 - m·u): the relative error bound of a sum of m rounded operations; two extra
    units of slack absorb the float64 rounding of the checks themselves."""
    return (m + 2) * U / (1.0 - (m + 2) * U)


def default_chunk(n: int) -> int:
    """Rows per chunk so that the chunk × n scores take about CHUNK_BYTES (cache-resident), at least 64."""
    return max(64, CHUNK_BYTES // (4 * max(n, 1)))


@contextlib.contextmanager
def _fp32_exact(device: torch.device):
    """No autocast and IEEE fp32 matmuls (no TF32/bf16 inside fp32 matmuls), restored on exit."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
    old = backend.fp32_precision
    backend.fp32_precision = "ieee"
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        backend.fp32_precision = old


def _check(flat: torch.Tensor, pool: torch.Tensor) -> None:
    if flat.dim() != 2 or pool.dim() != 2:
        raise ValueError(f"search expects flat (N, d) and pool (n, d); got {tuple(flat.shape)} and {tuple(pool.shape)}")
    if flat.shape[1] != pool.shape[1]:
        raise ValueError(f"kernel size mismatch: flat rows have d={flat.shape[1]}, pool rows d={pool.shape[1]}")
    if pool.shape[0] < 1:
        raise ValueError("the pool is empty: it needs at least one kernel")
    if flat.device != pool.device:
        raise ValueError(f"flat is on {flat.device} but pool is on {pool.device}")


class _Bounds:
    """Constants of the error analysis for kernels of dimension d (see the module docstring)."""

    def __init__(self, d: int):
        self.gs = _gamma(d + 3)  # our score ||p||² - 2 w·p (pool norms rounded once, then addmm)
        self.gr = _gamma(d + 2)  # reference: d differences, d squares, d - 1 additions
        self.eta_s = (2 * d + 4) * TINY
        self.eta_r = (2 * d + 2) * TINY
        self.gw = _gamma(d)  # ||w||² in fp32
        # reference strictly orders k after j* when D_k (1-gr) - eta_r)(1-u)² > (D_j* (1+gr) + eta_r)(1+u)²
        self.a = (1 - self.gr) * (1 - U) ** 2
        self.b = (1 + self.gr) * (1 + U) ** 2
        self.s_lo, self.s_hi, self.e = math.sqrt(1 - self.gr), math.sqrt(1 + self.gr), math.sqrt(self.eta_r)

    def squared_from_scores(self, w2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):
        """Upper bound on the true D1 = ||w - p_j*||² and lower bound on min over k != j* of D_k, from the
        computed scores v1 (best), v2 (second best) and the computed ||w||² (all float64).

        |score error| <= gs·(||p||² + 2||w||·||p||) + eta_s <= gs·(8 W + 2 D) + eta_s, since ||p|| <= ||w|| + √D."""
        w_hi, w_lo = w2 * (1 + self.gw), w2 * (1 - self.gw)
        d1_hi = (w_hi * (1 + 8 * self.gs) + v1 + self.eta_s) / (1 - 2 * self.gs)
        d2_lo = (w_lo - 8 * self.gs * w_hi + v2 - self.eta_s) / (1 + 2 * self.gs)
        return d1_hi, d2_lo.clamp_min(0)

    def squared_from_reference(self, r1: torch.Tensor, r2: torch.Tensor):
        """The same bounds from the reference's own rounded distances r = fl(sqrt(S)) (float64)."""
        d1_hi = ((r1 / (1 - U)) ** 2 + self.eta_r) / (1 - self.gr)
        d2_lo = ((r2 / (1 + U)) ** 2 - self.eta_r) / (1 + self.gr)
        return d1_hi, d2_lo.clamp_min(0)

    def certified(self, d1_hi: torch.Tensor, d2_lo: torch.Tensor) -> torch.Tensor:
        """True where the reference's rounded distances put every k != j* strictly after j*."""
        return (d2_lo * self.a - self.eta_r * (1 - U) ** 2) > (d1_hi * self.b + self.eta_r * (1 + U) ** 2)

    def margin(self, d1_hi: torch.Tensor, d2_lo: torch.Tensor) -> torch.Tensor:
        """Largest δ such that any w' with ||w' - w|| <= δ still has j* as the reference's strict argmin:
        ||w' - p_j*|| <= √D1 + δ and ||w' - p_k|| >= √D2 - δ, then the certified inequality, linear in δ."""
        num = (d2_lo.sqrt() * self.s_lo - self.e) * (1 - U) - (d1_hi.sqrt() * self.s_hi + self.e) * (1 + U)
        m = num / (self.s_lo * (1 - U) + self.s_hi * (1 + U))
        return torch.nan_to_num(m, nan=0.0).clamp_min(0) * (1 - 1e-6)


def _reference_rows(x: torch.Tensor, p: torch.Tensor):
    """The brute-force reference on a few rows: argmin, best and second-best rounded distances."""
    r = torch.cdist(x, p, compute_mode="donot_use_mm_for_euclid_dist")
    idx = r.argmin(1)
    r1 = r.gather(1, idx[:, None]).squeeze(1)
    if p.shape[0] > 1:
        r2 = r.scatter_(1, idx[:, None], math.inf).amin(1)
    else:
        r2 = torch.full_like(r1, math.inf)
    return idx, r1, r2


@torch.no_grad()
def _search(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None, want_margin: bool):
    _check(flat, pool)
    device = flat.device
    with _fp32_exact(device):
        x = flat.detach().to(torch.float32).contiguous()
        p = pool.detach().to(torch.float32).contiguous()
        num, n, d = x.shape[0], p.shape[0], x.shape[1]
        idx = torch.zeros(num, dtype=torch.long, device=device)
        if num == 0 or n == 1:
            return idx, torch.full((num,), math.inf, device=device) if want_margin else None
        chunk = default_chunk(n) if chunk is None else int(chunk)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        pn = p.double().square().sum(1).to(torch.float32)
        pt = p.t()
        v1 = torch.empty(num, device=device)
        v2 = torch.empty(num, device=device)
        buf = torch.empty(min(chunk, num), n, device=device)
        for s in range(0, num, chunk):
            e = min(s + chunk, num)
            b = buf[: e - s]
            torch.addmm(pn, x[s:e], pt, alpha=-2, out=b)
            torch.min(b, 1, out=(v1[s:e], idx[s:e]))
            b.scatter_(1, idx[s:e, None], math.inf)
            torch.amin(b, 1, out=v2[s:e])
        bounds = _Bounds(d)
        w2 = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square_()
        d1_hi, d2_lo = bounds.squared_from_scores(w2, v1.double(), v2.double())
        ok = bounds.certified(d1_hi, d2_lo)
        redo = (~ok).nonzero().squeeze(1)
        if redo.numel():
            ridx, r1, r2 = _reference_rows(x[redo], p)
            idx[redo] = ridx
            if want_margin:
                r_hi, r_lo = bounds.squared_from_reference(r1.double(), r2.double())
                d1_hi[redo], d2_lo[redo] = r_hi, r_lo
        margin = bounds.margin(d1_hi, d2_lo).to(torch.float32) if want_margin else None
        return idx, margin


def nearest(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Eq. 1 for every row of `flat` (N × d temporary kernels): the index of the nearest row of `pool` (n × d).

    Exact: equal to `torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)` on the fp32
    inputs, ties to the lowest index. Extra memory: chunk × n scores (default `default_chunk(n)` rows). Runs on the
    inputs' device, without autograd, in fp32 even under autocast."""
    return _search(flat, pool, chunk, want_margin=False)[0]


def nearest_with_margin(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None = None):
    """`nearest` plus, per row, a margin: a temporary kernel w' with ||w' - w|| < margin has the same nearest pool
    kernel (same reference argmin). It is (d2 - d1)/2 with d1, d2 the nearest and second-nearest L2 distances,
    lowered by the rounding bounds (0 where the two are tied or too close to call; inf for a one-kernel pool)."""
    return _search(flat, pool, chunk, want_margin=True)


class SearchCache:
    """Eq. 1 with the exact shortcut of issue 2: a temporary kernel that moved less than its margin since it was
    last compared (its anchor) keeps its index, by the triangle inequality
    ||w - k1|| <= d1 + δ < d2 - δ <= ||w - kj||; only the kernels that moved that far are searched again.

    Call it with the current (N, d) temporary kernels and the pool; it returns the same indices as `nearest`.
    It starts afresh by itself when N, d, the device or the pool's values change; `reset()` forgets everything
    (the NWS layer calls it when the pool moves, e.g. in pool distillation). `enabled=False` always runs the
    full search. A returned tensor is never modified afterwards. `last_searched` counts the rows searched by
    the last call (for benchmarks and tests)."""

    def __init__(self, chunk: int | None = None, enabled: bool = True):
        self.chunk = chunk
        self.enabled = enabled
        self.last_searched = 0
        self.reset()

    def reset(self) -> None:
        self.anchor: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.margin_sq: torch.Tensor | None = None
        self.pool: torch.Tensor | None = None

    def _valid_for(self, x: torch.Tensor, p: torch.Tensor) -> bool:
        a = self.anchor
        return (
            a is not None and a.shape == x.shape and a.device == x.device
            and self.pool.shape == p.shape and torch.equal(self.pool, p)
        )

    @torch.no_grad()
    def __call__(self, flat: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        _check(flat, pool)
        x = flat.detach().to(torch.float32)
        p = pool.detach().to(torch.float32)
        if not self.enabled:
            self.last_searched = x.shape[0]
            return nearest(x, p, self.chunk)
        if not self._valid_for(x, p):
            idx, margin = nearest_with_margin(x, p, self.chunk)
            self.anchor, self.indices, self.pool = x.clone(), idx, p.clone()
            self.margin_sq = _margin_sq(margin)
            self.last_searched = x.shape[0]
            return idx
        moved = _moved_sq(x, self.anchor)
        rows = (~(moved < self.margin_sq)).nonzero().squeeze(1)  # NaN moves are searched again
        self.last_searched = rows.numel()
        if rows.numel() == 0:
            return self.indices
        xr = x[rows]
        ridx, rmargin = nearest_with_margin(xr, p, self.chunk)
        idx = self.indices.clone()
        idx[rows] = ridx
        self.indices = idx
        self.anchor[rows] = xr
        self.margin_sq[rows] = _margin_sq(rmargin)
        return idx


def _margin_sq(margin: torch.Tensor) -> torch.Tensor:
    """margin² rounded down to fp32 (computed in float64, lowered by far more than one fp32 rounding)."""
    return (margin.double().square() * (1 - 1e-6)).to(torch.float32)


def _moved_sq(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """An upper bound on ||x - anchor||² per row: the fp32 sum of squares, raised by its rounding bound."""
    d = x.shape[1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        s = (x - anchor).square_().sum(1)
    return s * (1 + 4 * _gamma(d + 2)) + (2 * d + 4) * TINY
