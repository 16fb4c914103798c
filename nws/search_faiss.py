"""Eq. 1 of seed 004_ (k_i = NWS(w; M), i = argmin_i ||w - k_i||_2) with faiss as the candidate generator, still
certified exact: `nearest_faiss(flat, pool)` equals `nws.search.nearest(flat, pool)` on every input.

Why. faiss's `IndexFlatL2` fuses the distances with the selection of the k best in C++ (no N × n score matrix goes
through memory), which the torch path of `nws.search` cannot do; but faiss alone is not exact: on near-ties its
own fp32 rounding decides. So faiss only proposes: `search(x, k=2)` gives, per row, the best label j1 and the fp32
distances f1 <= f2 of its two best, every other pool kernel k having a computed f_k >= f2 (faiss keeps the two
smallest of its own values; a NaN value would be skipped, hence the checks below).

Certificate. faiss 1.15 computes f either directly, Σ(w_i - p_i)² (while N·d < 128000), or as
fl(||w||²) + fl(||p||²) - 2·sgemm(w, p) clamped at 0 (`knn_L2sqr`, faiss/utils/distances.cpp). Either way, for any
summation order and blocking, with or without FMA (Higham §3.1), |f - D| <= γ_{d+2}·(||w|| + ||p||)² + η, D the
true squared distance, and ||p|| <= ||w|| + √D makes that <= γ_{d+2}·(8W + 2D) + η (W = ||w||²): the bound
`nws.search._Bounds` uses for its own scores s = D - W (with γ_{d+5}). Hence D_j1 <= (f1 + 8γW + η)/(1 - 2γ) and,
the lower bound growing with f, D_k >= (f2 - 8γW - η)/(1 + 2γ) for every k != j1; put into the reference's
ordering test this is `_Bounds.certified_fast(W_hi, f1, f2)` with a smaller constant in front of W than its own
c (c >= 8γ(hi + lo)/lo, with room: checked in tests/nws/test_search_faiss.py). So a row that passes has j1 as the strict
argmin of the reference's rounded distances; the others (near-ties, duplicated pool kernels) are recomputed by the
reference on those rows only, as in `nws.search`. η: 2**-120 per operation, which holds even where a BLAS flushes
subnormal results to zero. The inputs faiss reads must be finite, free of subnormals (a denormals-are-zero mode would
read them as 0, an error no relative bound covers) and below 2**62 in magnitude (W, ||p||² < 2**124: nothing
overflows); otherwise the call goes to `nws.search`'s torch path, whose checks handle such values.
"""

from __future__ import annotations

import torch

from nws import search
from nws.search import _Bounds, _check, _fp32_exact, _norm2_hi, _reference_rows, _search

try:
    import faiss
except ImportError:  # an optional dependency: the `search` extra (pip install faiss-cpu==1.15.1)
    faiss = None

TINY = 2.0**-120  # absolute error of one underflowing operation in faiss, with room for flush-to-zero
HUGE = 2.0**124  # W and ||p||² below this: no fp32 overflow in faiss's distances
NORMAL = 2.0**-126  # smallest normal fp32


def available() -> bool:
    return faiss is not None


def nearest(flat: torch.Tensor, pool: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """`nws.search.nearest` through the chosen backend: "torch" (nws.search), "faiss" (`nearest_faiss`, CPU only,
    needs faiss-cpu) or "auto" (faiss where installed, on CPU, for d > 1); every backend gives the same indices,
    CUDA inputs keep torch. (The dispatch lives here, not in nws.search, which this module builds on.)"""
    if use_faiss(backend, flat):
        return nearest_faiss(flat, pool)
    return search.nearest(flat, pool)


def use_faiss(backend: str, flat: torch.Tensor) -> bool:
    """Whether `nearest(..., backend=backend)` searches with faiss: "torch" never; "faiss" on CPU
    (an error if faiss is not installed); "auto" on CPU for kernels of d > 1 when faiss is installed (scalar
    kernels are searched faster in the sorted pool). CUDA inputs always keep the torch path."""
    if backend not in ("torch", "faiss", "auto"):
        raise ValueError(f"backend must be 'torch', 'faiss' or 'auto', got {backend!r}")
    if backend == "torch" or flat.device.type != "cpu":
        return False
    if backend == "faiss":
        _require()
        return True
    return available() and flat.dim() == 2 and flat.shape[1] > 1


def _require() -> None:
    if faiss is None:
        raise ModuleNotFoundError("the faiss backend needs faiss-cpu: pip install faiss-cpu==1.15.1 "
                                  "(the project's `search` extra)")


def _bounded(t: torch.Tensor, norm2_hi: torch.Tensor) -> bool:
    """True where faiss's error bound holds for t's values (`norm2_hi` = `_norm2_hi(t)`): finite, below 2**62, no
    subnormals."""
    if not bool(norm2_hi < HUGE):  # NaN compares False
        return False
    return not bool(((t.abs() < NORMAL) & (t != 0)).any())


@torch.no_grad()
def nearest_faiss(flat: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """`nws.search.nearest(flat, pool)` on CPU with faiss's k=2 search as the candidates (module docstring).
    faiss runs on torch's thread count."""
    _check(flat, pool)
    if flat.device.type != "cpu":
        raise ValueError(f"the faiss search runs on CPU, got inputs on {flat.device}")
    _require()
    x = flat.detach().to(torch.float32).contiguous()
    p = pool.detach().to(torch.float32).contiguous()
    num, n, d = x.shape[0], p.shape[0], x.shape[1]
    if num == 0 or n == 1:
        return _search(x, p, None, want_bounds=False)[0]
    w2_hi = _norm2_hi(x)  # one bound for every row: faiss's input check and the certificate
    if not (_bounded(x, w2_hi) and _bounded(p, _norm2_hi(p))):
        return _search(x, p, None, want_bounds=False)[0]
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatL2(d)
    index.add(p.numpy())
    dist, labels = index.search(x.numpy(), 2)
    f = torch.from_numpy(dist)
    lab = torch.from_numpy(labels)
    idx = lab[:, 0].contiguous()
    ok = _Bounds(d, TINY).certified_fast(w2_hi, f[:, 0], f[:, 1]) & (lab >= 0).all(1)
    redo = (~ok).nonzero().squeeze(1)
    if redo.numel():
        with _fp32_exact(x.device):
            idx[redo] = _reference_rows(x[redo], p)[0]
    return idx
