"""The exact search cache: Eq. 1 run again only on the rows whose answer can have changed since they were last
compared, for a fixed pool (issue 2) and for a moving one (issue 20: pool distillation, Eq. 4).

Fixed pool: a row that moved less than its margin ≈ (d2 - d1)/2 keeps its index (triangle inequality; the margin
and `_limit` carry the rounding bounds of `nws.search`). Moving pool: the test of `nws.drift` — the row's current
distance to its own kernel against its budget d2 less its own move δ and the largest move of a pool kernel since
the row was compared, plus a direct comparison with the kernels that jumped. Either way the result is
`nearest(flat, pool)`, ties included: a row whose certificate is not strict is searched again. Where the fused
CPU kernel (`nws.search_native`) runs the search, a full search of a moved pool costs less than those checks, and
the cache searches moved pools in full (`track_moves`).
"""

from __future__ import annotations

import math

import torch

from nws import search_native
from nws.drift import PoolDrift, down, norm_hi
from nws.search import TINY, _Bounds, _check, _fp32_exact, _gamma, _margin, _search, nearest

REBASE = 0.5  # a call that would search more than this share of the rows searches all (and forgets old pools)
MAX_JUMPED = 8  # more jumped kernels than this (and n/8): the same
# after a call whose checks sent it to the full search anyway, the next `backoff` calls search in full without
# checking (the checks cost about a third of a full search: paying them for nothing every step made pool
# distillation slower than no cache); the backoff doubles while that repeats, up to MAX_BACKOFF, and is 1 again
# after a call the checks paid for
MAX_BACKOFF = 16


class SearchCache:
    """`cache(flat, pool)` returns the same indices as `nearest(flat, pool)`, searching only the rows it cannot
    certify. It starts afresh by itself when N, d or the device change, and keeps its rows across pool moves
    (the NWS layer passes the moving pool of distillation to the same cache); `reset()` forgets everything (the
    layer calls it when its pool or indices are set from outside); `enabled=False` always runs the full search.
    A returned tensor is never modified afterwards. `last_searched` is the number of rows the last call searched.
    """

    def __init__(self, chunk: int | None = None, enabled: bool = True, track_moves: bool | None = None):
        """`track_moves`: run the moving-pool checks (True), or search a moved pool in full every call (False);
        None picks by cost: False on CPU where the fused kernel of `nws.search_native` is built (there a full
        search costs less than the checks: 105 vs about 180 ms a distillation step of the full-width ResNet-18,
        1 thread, 2-core AMD EPYC), True elsewhere (CUDA, the torch path)."""
        self.chunk = chunk
        self.enabled = enabled
        self.track_moves = track_moves
        self.last_searched = 0
        self.reset()

    def reset(self) -> None:
        self.anchor: torch.Tensor | None = None  # the rows as they were last compared with the pool
        self.indices: torch.Tensor | None = None
        self.limit: torch.Tensor | None = None  # fixed pool: a computed ||w - anchor||² below this keeps the index
        self.budget: torch.Tensor | None = None  # per row, float64: lower bound on ||anchor - p_k||, k != index
        self.when: torch.Tensor | None = None  # per row: the stamp of the pool it was compared with (nws.drift)
        self.drift: PoolDrift | None = None
        self._work: torch.Tensor | None = None
        self.skip, self.backoff = 0, 1  # full searches left without checks; the next skip (MAX_BACKOFF)

    def _valid_for(self, x: torch.Tensor, p: torch.Tensor) -> bool:
        a = self.anchor
        return a is not None and a.shape == x.shape and a.device == x.device and self.drift.ref.shape == p.shape

    @torch.no_grad()
    def __call__(self, flat: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        _check(flat, pool)
        x = flat.detach().to(torch.float32)
        p = pool.detach().to(torch.float32)
        if not self.enabled:
            self.last_searched = x.shape[0]
            return nearest(x, p, self.chunk)
        if not self._valid_for(x, p):
            return self._full(x, p)
        static = self.drift.static(p)
        if static:
            rows = self._moved_rows(x)
        else:
            if not self._tracks_moves(x):  # the drift state stays "moved": no later call trusts the old rows
                self.last_searched = x.shape[0]
                return nearest(x, p, self.chunk)
            if self.skip:
                self.skip -= 1
                return self._full(x, p)
            keep = self._drift_keep(x, p)
            rows = None if keep is None else (~keep).nonzero().squeeze(1)
            if rows is None or rows.numel() > REBASE * x.shape[0]:
                self.skip, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF)
                return self._full(x, p)
            self.backoff = 1
        self.last_searched = rows.numel()
        if rows.numel() == 0:
            return self.indices
        xr = x[rows]
        ridx, d1_hi, d2_lo = _search(xr, p, self.chunk, want_bounds=True)
        self.indices = self.indices.clone()
        self.indices[rows] = ridx
        self.anchor[rows] = xr
        self.budget[rows] = _budget(d2_lo)
        self.when[rows] = self.drift.latest
        if static:  # the fixed-pool limits are kept only while the pool has not moved since the full search
            self.limit[rows] = _limit(_margin(x.shape[1], p.shape[0], d1_hi, d2_lo), x.shape[1])
        return self.indices

    def _tracks_moves(self, x: torch.Tensor) -> bool:
        if self.track_moves is not None:
            return self.track_moves
        return not (x.device.type == "cpu" and search_native.default_kernel() is not None)

    def _full(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Search every row and start the pool history afresh."""
        idx, d1_hi, d2_lo = _search(x, p, self.chunk, want_bounds=True)
        self.anchor, self.indices, self.drift = x.clone(), idx, PoolDrift(p)
        self.limit = _limit(_margin(x.shape[1], p.shape[0], d1_hi, d2_lo), x.shape[1])
        self.budget = _budget(d2_lo)
        self.when = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self._work = torch.empty_like(self.anchor)
        self.last_searched = x.shape[0]
        return idx

    def _moved_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed pool: the rows that moved at least their margin (issue 2)."""
        with _fp32_exact(x.device):  # fp32 sum of squares: ||x - anchor||² <= s·(1 + 4γ) + eta (see `_limit`)
            torch.sub(x, self.anchor, out=self._work)
            moved = torch.mv(self._work.square_(), torch.ones(x.shape[1], device=x.device))
        return (~(moved < self.limit)).nonzero().squeeze(1)  # NaN moves are searched again

    def _drift_keep(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor | None:
        """Moving pool: the rows certified to keep their index, or None (search all). For a row compared with
        pool t, every k != i outside the jumped set has ||x - p_k|| >= budget - δ - max ε(t→now); the jumped
        kernels and i are compared directly."""
        gone = self.drift.push(p)
        if gone >= 0:  # rows compared with a pool that left the history
            self.budget.masked_fill_(self.when == gone, -math.inf)
        eps = self.drift.update(p, self.when)
        if int(self.drift.jumped.sum()) > max(MAX_JUMPED, p.shape[0] // 8):  # direct comparisons cost too much
            return None
        bounds = _Bounds(x.shape[1])
        r1 = norm_hi(x, p[self.indices])
        r2 = down(down(self.budget - norm_hi(x, self.anchor)) - eps)
        keep = bounds.ordered(r1, r2)
        if self.drift.jumped.any():
            rows = keep.nonzero().squeeze(1)
            near = self.drift.nearest_jumped_lo(x[rows], p, self.indices[rows])
            keep[rows] = bounds.ordered(r1[rows], near)
            r2[rows] = torch.minimum(r2[rows], near)
        # a kept row whose pool leaves the history at the next move is compared anew with this one, for free:
        # r2 bounds its distance to every other kernel of this pool
        old = (keep & self.drift.leaving_next(self.when)).nonzero().squeeze(1)
        self.anchor[old], self.budget[old], self.when[old] = x[old], r2[old], self.drift.latest
        return keep


def _budget(d2_lo: torch.Tensor) -> torch.Tensor:
    """A lower bound on the distance from a row to every pool kernel but its nearest, when it was compared."""
    return down(d2_lo.sqrt())


def _limit(margin: torch.Tensor, d: int) -> torch.Tensor:
    """The largest computed squared move that still proves ||w - anchor|| < margin: the fp32 sum of d squared
    differences is within γ_{d+2} of the true one (plus underflow), so the limit is margin² lowered by that,
    evaluated in float64 and lowered again by far more than the final rounding to fp32."""
    m2 = margin.double().square()
    limit = (m2 - (2 * d + 4) * TINY) / (1 + 4 * _gamma(d + 2)) * (1 - 1e-6)
    return limit.clamp_min(0).to(torch.float32)
