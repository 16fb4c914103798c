"""Neighbour ranks in a pool: the context of the codec's `near` mode (issue 9).

Task t starts from W_t = D(C_{t-1}; M) (seed 004_ Algorithm 1, line 3) and its temporary kernels move by small
steps, so a kernel whose index changes almost always moves to a pool kernel *near* its previous one. Coding the new
index as its rank among the previous kernel's neighbours (0 = the nearest other pool kernel) turns ~log2(n) bits
into a few. Encoder and decoder must rank alike: distances are computed in float64 one coordinate at a time
(elementwise IEEE operations, no BLAS reduction whose order could differ between machines) and sorted stably,
so ties go to the lower index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch

MAX_POOL = 4096  # an n×n rank table per layer: 64 MiB of int32 at this size
_CACHE_SIZE = 64  # neighbour orders kept (pools are frozen and shared by every task: computed once per layer)
_orders: dict[bytes, np.ndarray] = {}


def pool_array(name: str, pool) -> np.ndarray:
    """A layer's pool as a 2-D float32 array (n × d); a clear error naming the layer otherwise."""
    if isinstance(pool, torch.Tensor):
        pool = pool.detach().cpu().numpy()
    pool = np.asarray(pool)
    if pool.ndim != 2 or pool.dtype.kind != "f":
        raise ValueError(f"layer {name!r}: a pool is a 2-D float array (kernels × values), got {pool.dtype} "
                         f"of shape {tuple(pool.shape)}")
    return pool.astype(np.float32, copy=False)


def neighbour_order(pool: np.ndarray) -> np.ndarray:
    """(n × n-1) int32: row a lists the other pool kernels from the nearest to the farthest from kernel a (squared
    L2, ties to the lower index). Cached by the pool's bytes (read-only arrays)."""
    pool = np.ascontiguousarray(pool, np.float32)
    key = hashlib.sha256(np.asarray(pool.shape, "<i8").tobytes() + pool.tobytes()).digest()
    if key not in _orders:
        if len(_orders) >= _CACHE_SIZE:
            _orders.pop(next(iter(_orders)))
        order = _neighbour_order(pool)
        order.setflags(write=False)
        _orders[key] = order
    return _orders[key]


def _neighbour_order(pool: np.ndarray) -> np.ndarray:
    p = pool.astype(np.float64)
    n = p.shape[0]
    if n > MAX_POOL:
        raise ValueError(f"pool of {n} kernels: neighbour ranks support at most {MAX_POOL}")
    dist = np.zeros((n, n))
    for k in range(p.shape[1]):
        diff = p[:, None, k] - p[None, :, k]
        dist += diff * diff
    np.fill_diagonal(dist, -1.0)  # the kernel itself sorts first and is dropped
    return np.argsort(dist, axis=1, kind="stable")[:, 1:].astype(np.int32)


def rank_table(order: np.ndarray) -> np.ndarray:
    """(n × n) int32: rank[a, b] = position of b in order[a] (-1 on the diagonal)."""
    n = order.shape[0]
    rank = np.full((n, n), -1, np.int32)
    rank[np.arange(n)[:, None], order] = np.arange(n - 1, dtype=np.int32)
    return rank


def pools_hash(names: list[str], pools: Mapping[str, np.ndarray]) -> bytes:
    """8 bytes naming the pools a `near` blob was coded with (it decodes only with the very same kernels)."""
    h = hashlib.sha256()
    for name in names:
        p = pools[name]
        h.update(name.encode("utf-8") + b"\0" + np.asarray(p.shape, "<i8").tobytes())
        h.update(np.ascontiguousarray(p, "<f4").tobytes())
    return h.digest()[:8]
