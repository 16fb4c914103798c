"""Nearest-kernel search, Eq. 1 of seed 004_: k_i = NWS(w; M) with i = argmin_i ||w - k_i||_2.

The official code (notes/algorithms.md §1.1) runs `torch.cdist` from every temporary kernel to every pool
kernel and takes the argmin, writing the whole (kernels × pool) distance matrix. Here the scores
s_j = ||p_j||² - 2 w·p_j (||w||² does not change the argmin) come from one matmul per chunk of rows, so the extra
memory is at most chunk × n scores; on CPU the fused C++ kernel of `nws.search_native` computes the same scores
without any score matrix (issue 20: the selection, not the arithmetic, was most of the time); scalar kernels
(d = 1: 1×1 convs, Linear weights) are searched in the sorted pool instead. Everything is fp32 with autocast off
and IEEE fp32 matmuls (no TF32/bf16), whatever the caller set.

Exactness. The result is defined as, and equal to, the brute force
`torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)` on the fp32 inputs, ties
included (ties go to the lowest index). For every row the best and second-best scores v1 <= v2 are kept. With
u = 2**-24 and γ_m = m·u/(1 - m·u), a computed score is within γ_{d+3}·(||p||² + 2||w||·||p||) of the true one,
and the reference's squared distance within γ_{d+2}·D of the true D (then one rounding of its sqrt); both hold
for any summation order, with or without FMA (Higham, Accuracy and Stability, §3.1). `_Bounds` turns v1, v2 into
an upper bound on D1 (the best) and a lower bound on every other D_k; when they certify that every other pool
kernel is strictly farther even in the reference's rounded arithmetic, the reference's argmin is ours. The rare
rows that are not certified (near-ties, duplicated pool kernels, non-finite values) are recomputed with the
reference itself on those rows only. The same bounds give each row a margin: how far its temporary kernel may
move before the answer can change (triangle inequality), which `nws.cache.SearchCache` uses to skip the search
for kernels that moved less than that since they were last compared (issue 2's exact shortcut; issue 20 extends
it to moving pools).
"""

from __future__ import annotations

import contextlib
import math

import torch

from nws import search_native
from nws.drift import down, up

U = 2.0**-24  # unit roundoff of fp32
TINY = 2.0**-149  # smallest fp32 subnormal: bounds the absolute error of one underflowing operation
CHUNK_BYTES = 2**20  # CPU scores per thread per chunk: about one core's L2 cache
CUDA_CHUNK_BYTES = 2**26  # on a GPU fewer, larger launches win


def _gamma(m: int) -> float:
    """Higham's γ_m, with two extra units of slack that absorb the float64 rounding of the checks themselves."""
    return (m + 2) * U / (1.0 - (m + 2) * U)


def default_chunk(n: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: on CPU the chunk × n fp32 scores take about CHUNK_BYTES per thread (each thread reduces
    its share while it is still in its L2 cache), on CUDA CUDA_CHUNK_BYTES; at least 64 rows."""
    if torch.device(device).type == "cuda":
        return max(64, CUDA_CHUNK_BYTES // (4 * max(n, 1)))
    return max(64, CHUNK_BYTES * max(1, torch.get_num_threads()) // (4 * max(n, 1)))


@contextlib.contextmanager
def _fp32_exact(device: torch.device):
    """Autocast off and IEEE fp32 matmuls inside; the caller's settings are restored on exit."""
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
        raise ValueError(f"search expects flat (N, d) and pool (n, d), got {tuple(flat.shape)}, {tuple(pool.shape)}")
    if flat.shape[1] != pool.shape[1]:
        raise ValueError(f"kernel size mismatch: rows of flat have d={flat.shape[1]}, pool rows d={pool.shape[1]}")
    if pool.shape[0] < 1:
        raise ValueError("the pool is empty: it needs at least one kernel")
    if flat.device != pool.device:
        raise ValueError(f"flat is on {flat.device} but the pool is on {pool.device}")


class _Bounds:
    """The error analysis of the module docstring for kernels of dimension d, as bounds on true squared distances.

    Score error: |ŝ - s| <= gs·(||p||² + 2||w||·||p||) + eta_s <= gs·(8 W + 2 D) + eta_s, since ||p|| <= ||w|| + √D
    (W = ||w||²). The reference puts k strictly after j* if (D_k (1-gr) - eta_r)(1-u)² > (D_j* (1+gr) + eta_r)(1+u)²."""

    def __init__(self, d: int, tiny: float = TINY):
        """`tiny` bounds the absolute error of one underflowing operation (TINY under IEEE gradual underflow;
        `nws.search_faiss` passes a larger one, which holds even where subnormal results are flushed to zero)."""
        self.gs, self.gr, self.gw = _gamma(d + 3), _gamma(d + 2), _gamma(d)
        self.eta_s, self.eta_r = (2 * d + 4) * tiny, (2 * d + 2) * tiny
        self.a, self.b = (1 - self.gr) * (1 - U) ** 2, (1 + self.gr) * (1 + U) ** 2
        # the ordering test, linear in the scores: v2 - v1 > k1·|v1| + c·W + e (`certified_fast`)
        lo, hi = self.a / (1 + 2 * self.gs), self.b / (1 - 2 * self.gs)
        gw, gs = self.gw, self.gs
        self.k1 = (hi - lo) / lo
        self.c = (hi * (1 + gw) * (1 + 8 * gs) - lo * (1 - gw) + 8 * lo * gs * (1 + gw)) / lo
        self.e = ((hi + lo) * self.eta_s + self.eta_r * ((1 + U) ** 2 + (1 - U) ** 2)) / lo

    def certified_fast(self, w2_hi: torch.Tensor | float, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """True where the reference's rounded distances put every k != j* strictly after j*: the ordering test
        of the class docstring with D1 and D_k bounded through the scores, rearranged to be linear in them and
        evaluated in fp32. w2_hi is any upper bound on ||w||² (per row or one number; the test only gets
        stricter as it grows). The constants are raised by 16u and the absolute term by 64 subnormals, which
        covers the rounding of this fp32 evaluation itself; NaN gives False."""
        slack = 1 + 16 * U
        rhs = torch.add(w2_hi * (self.c * slack) + (self.e + 64 * TINY), v1.abs(), alpha=self.k1 * slack)
        return (v2 - v1) * (1 - 2 * U) > rhs

    def from_scores(self, w2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):
        """(D1_hi, D2_lo) from the computed ||w||² and best / second-best scores (float64)."""
        w_hi, w_lo = w2 * (1 + self.gw), w2 * (1 - self.gw)
        d1_hi = (w_hi * (1 + 8 * self.gs) + v1 + self.eta_s) / (1 - 2 * self.gs)
        d2_lo = (w_lo - 8 * self.gs * w_hi + v2 - self.eta_s) / (1 + 2 * self.gs)
        return d1_hi, d2_lo.clamp_min(0)

    def from_reference(self, r1: torch.Tensor, r2: torch.Tensor):
        """(D1_hi, D2_lo) from the reference's own rounded distances r = fl(sqrt(S)) (float64)."""
        d1_hi = ((r1 / (1 - U)) ** 2 + self.eta_r) / (1 - self.gr)
        d2_lo = ((r2 / (1 + U)) ** 2 - self.eta_r) / (1 + self.gr)
        return d1_hi, d2_lo.clamp_min(0)

    def margin(self, d1_hi: torch.Tensor, d2_lo: torch.Tensor) -> torch.Tensor:
        """Largest δ such that every w' with ||w' - w|| <= δ keeps j* as the reference's strict argmin:
        ||w' - p_j*|| <= √D1 + δ and ||w' - p_k|| >= √D2 - δ put into the reference's ordering test (sqrt
        form, linear in δ). About (d2 - d1)/2; 0 where that test fails even at δ = 0."""
        s_lo, s_hi, e = math.sqrt(1 - self.gr), math.sqrt(1 + self.gr), math.sqrt(self.eta_r)
        num = (d2_lo.sqrt() * s_lo - e) * (1 - U) - (d1_hi.sqrt() * s_hi + e) * (1 + U)
        m = num / (s_lo * (1 - U) + s_hi * (1 + U))
        return torch.nan_to_num(m, nan=0.0, posinf=0.0).clamp_min(0) * (1 - 1e-6)

    def ordered(self, r1_hi: torch.Tensor, r2_lo: torch.Tensor) -> torch.Tensor:
        """True where true distances ||w - p_j*|| <= r1_hi and ||w - p_k|| >= r2_lo (every k != j*) make the
        reference put j* strictly first: the test of `margin` at δ = 0, each float64 step rounded against it
        (`nws.drift.down`/`up`); NaN gives False. The pool-drift test of `nws.cache.SearchCache`."""
        s_lo, s_hi, e = math.sqrt(1 - self.gr), math.sqrt(1 + self.gr), math.sqrt(self.eta_r)
        lhs = down(down(down(r2_lo * s_lo) - e) * (1 - U))
        rhs = up(up(up(r1_hi * s_hi) + e) * (1 + U))
        return lhs > rhs


def _norm2_hi(x: torch.Tensor) -> torch.Tensor:
    """One cheap upper bound on ||w||² for every row w of x (N × d, fp32): d·max|w_i|², rounded up; a 0-d
    tensor, NaN or inf where x holds a non-finite value (every row then fails `_Bounds.certified_fast`)."""
    lo, hi = torch.aminmax(x)
    return torch.maximum(lo.abs(), hi.abs()).square() * (x.shape[1] * (1 + 4 * U))


_MAXPOOL = torch.ops.aten.max_pool2d_with_indices.out


def _top2_cpu(x: torch.Tensor, p: torch.Tensor, chunk: int):
    """Best score, its index and the second-best score per row, on CPU.

    Pool-major: a chunk's negated scores -s = 2 p·w - ||p||² fill an (n, chunk) block (one matmul), read as a
    channels-last image with the pool as height, so a max-pool with indices reduces over the pool vectorised
    across rows (first index on ties); the winner is masked and an amax gives the runner-up. The chunk is split
    in one batch entry per thread, since the max-pool parallelises over batch entries only."""
    num, n, d = x.shape[0], p.shape[0], x.shape[1]
    parts = max(1, min(torch.get_num_threads(), chunk))
    width = max(1, chunk // parts)
    p2 = (p * 2).expand(parts, n, d)
    neg_pn = -(p.double().square().sum(1).to(torch.float32)).view(1, n, 1)
    v1, v2 = torch.empty(num), torch.empty(num)
    idx = torch.empty(num, dtype=torch.long)
    buf = torch.empty(n * min(parts * width, num))
    full = num // (parts * width) * (parts * width)
    for a, b, g, s in ((0, full, parts, width), (full, num, 1, num - full)):
        if b > a:
            _top2_blocks(x[a:b], p2[:g], neg_pn, buf[: n * g * s].view(g, n, s), v1[a:b], idx[a:b], v2[a:b])
    return v1.neg_(), idx, v2.neg_()


def _top2_blocks(x, p2, neg_pn, b, v1, idx, v2):
    """The loop of `_top2_cpu` over chunks of g × s rows, with every per-chunk view made up front (the Python
    overhead per chunk is a sizeable part of the time)."""
    g, n, s = b.shape
    k, d = x.shape[0] // (g * s), x.shape[1]
    image = b.view(g, n, 1, s).permute(0, 3, 1, 2)
    size = [n, 1]
    for xc, o1, oi, si, o2 in zip(
        x.view(k, g, s, d).transpose(2, 3).unbind(0), v1.view(k, g, s, 1, 1).unbind(0),
        idx.view(k, g, s, 1, 1).unbind(0), idx.view(k, g, 1, s).unbind(0), v2.view(k, g, s).unbind(0),
        strict=True,
    ):
        torch.baddbmm(neg_pn, p2, xc, out=b)
        _MAXPOOL(image, size, size, [0, 0], [1, 1], False, out=o1, indices=oi)
        b.scatter_(1, si, -math.inf)
        torch.amax(b, 1, out=o2)


def _top2_rows(x: torch.Tensor, p: torch.Tensor, chunk: int):
    """The same, row-major with torch.min (the fast reduction on CUDA)."""
    num, n = x.shape[0], p.shape[0]
    pn = p.double().square().sum(1).to(torch.float32)
    v1 = torch.empty(num, device=x.device)
    v2 = torch.empty(num, device=x.device)
    idx = torch.empty(num, dtype=torch.long, device=x.device)
    buf = torch.empty(min(chunk, num), n, device=x.device)
    for xc, o1, oi, o2 in zip(x.split(chunk), v1.split(chunk), idx.split(chunk), v2.split(chunk), strict=True):
        b = buf[: xc.shape[0]]
        torch.addmm(pn, xc, p.t(), alpha=-2, out=b)
        torch.min(b, 1, out=(o1, oi))
        b.scatter_(1, oi[:, None], math.inf)
        torch.amin(b, 1, out=o2)
    return v1, idx, v2


def _top2_scalar(x: torch.Tensor, p: torch.Tensor):
    """The same for scalar kernels (d = 1) without any N × n scores. In 1-D the nearest pool value is one of
    the two that enclose w in the sorted pool, and every other value is at least as far as the next one on
    either side, so four scores per row suffice (positions off the pool score +inf)."""
    ps, order = torch.sort(p[:, 0], stable=True)
    inf = torch.full((2,), math.inf, device=x.device)
    zero = torch.zeros(2, device=x.device)
    pn = torch.cat([inf, ps.double().square().to(torch.float32), inf])
    pv = torch.cat([zero, ps, zero])
    w = x[:, 0]
    at = torch.searchsorted(ps, w) + 2  # w lies between padded positions at - 1 and at

    def score(pos):
        return torch.addcmul(pn[pos], w, pv[pos], value=-2)

    s_ll, s_l, s_r, s_rr = score(at - 2), score(at - 1), score(at), score(at + 1)
    left = s_l <= s_r
    best = torch.where(left, s_l, s_r) + ps[-1] * 0  # a NaN pool value (sorted last) sends every row to the reference
    second = torch.where(left, torch.minimum(s_r, s_ll), torch.minimum(s_l, s_rr))
    idx = order[(torch.where(left, at - 1, at) - 2).clamp_(0, p.shape[0] - 1)]
    return best, idx, second


def _reference_rows(x: torch.Tensor, p: torch.Tensor):
    """The brute-force reference on a few rows: its argmin and its best and second-best rounded distances."""
    r = torch.cdist(x, p, compute_mode="donot_use_mm_for_euclid_dist")
    idx = r.argmin(1)
    r1 = r.gather(1, idx[:, None]).squeeze(1)
    r2 = r.scatter_(1, idx[:, None], math.inf).amin(1)
    return idx, r1, r2


@torch.no_grad()
def _search(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None, want_bounds: bool, native: bool = True):
    """The indices and, if wanted, float64 bounds (D1_hi, D2_lo) on the true squared distances of every row to its
    nearest pool kernel and to every other one (0 and inf for a one-kernel pool). `native`: on CPU, for d > 1, the
    fused kernel of `nws.search_native` where it is built (the same scores without a score matrix), else the torch
    path."""
    _check(flat, pool)
    device = flat.device
    with _fp32_exact(device):
        x = flat.detach().to(torch.float32).contiguous()
        p = pool.detach().to(torch.float32).contiguous()
        num, n, d = x.shape[0], p.shape[0], x.shape[1]
        if num == 0 or n == 1:
            idx = torch.zeros(num, dtype=torch.long, device=device)
            if not want_bounds:
                return idx, None, None
            zero = torch.zeros(num, dtype=torch.float64, device=device)
            return idx, zero, torch.full_like(zero, math.inf)
        chunk = default_chunk(n, device) if chunk is None else int(chunk)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        kernel = search_native.default_kernel() if native and device.type == "cpu" and d > 1 else None
        if d == 1:
            v1, idx, v2 = _top2_scalar(x, p)
        elif kernel is not None:
            v1, idx, v2 = search_native.top2(x, p, kernel)
        else:
            v1, idx, v2 = (_top2_cpu if device.type == "cpu" else _top2_rows)(x, p, chunk)
        w2_hi = x[:, 0].square() * (1 + 4 * U) if d == 1 else _norm2_hi(x)
        bounds = _Bounds(d)
        redo = (~bounds.certified_fast(w2_hi, v1, v2)).nonzero().squeeze(1)
        d1_hi = d2_lo = None
        if want_bounds:
            w2 = torch.einsum("ij,ij->i", x, x).double()
            d1_hi, d2_lo = bounds.from_scores(w2, v1.double(), v2.double())
        if redo.numel():
            ridx, r1, r2 = _reference_rows(x[redo], p)
            idx[redo] = ridx
            if want_bounds:
                d1_hi[redo], d2_lo[redo] = bounds.from_reference(r1.double(), r2.double())
        return idx, d1_hi, d2_lo


def nearest(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None = None, *, native: bool = True) -> torch.Tensor:
    """Eq. 1 for every row of `flat` (N × d temporary kernels): the index of the nearest row of `pool` (n × d).

    Equal to `torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)` on the fp32
    inputs, ties to the lowest index. On CPU the scores come from the fused C++ kernel (`nws.search_native`, built
    by `make setup`; no score matrix) unless `native=False` or it is not built; otherwise the torch path uses
    chunk × n scores of extra memory (`default_chunk(n, device)` rows by default). Runs on the inputs' device,
    without autograd, in fp32 even under autocast. `nws.search_faiss.nearest` gives the same indices with faiss's
    candidates (CPU, optional)."""
    return _search(flat, pool, chunk, want_bounds=False, native=native)[0]


def nearest_with_margin(flat: torch.Tensor, pool: torch.Tensor, chunk: int | None = None):
    """(`nearest`, margin): a temporary kernel w' with ||w' - w|| < margin has the same nearest pool kernel.
    The margin is (d2 - d1)/2 (d1, d2: nearest and second-nearest L2 distances) lowered by the rounding bounds:
    0 where the two are tied or too close to call, inf for a one-kernel pool."""
    idx, d1_hi, d2_lo = _search(flat, pool, chunk, want_bounds=True)
    return idx, _margin(flat.shape[1], pool.shape[0], d1_hi, d2_lo)


def _margin(d: int, n: int, d1_hi: torch.Tensor, d2_lo: torch.Tensor) -> torch.Tensor:
    if n == 1:
        return torch.full(d1_hi.shape, math.inf, device=d1_hi.device)
    return _Bounds(d).margin(d1_hi, d2_lo).to(torch.float32)
