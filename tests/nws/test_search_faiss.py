"""The faiss candidate search (nws/search_faiss.py): equal to `nws.search.nearest` on every input, ties, near-ties,
cancellation and non-finite values included, with the rows faiss cannot certify handed to the reference. Skipped
where faiss-cpu (the `search` extra) is not installed, except the check of the certificate's constant."""

import pytest
import torch

from nws import search_faiss
from nws.search import _Bounds, nearest


@pytest.fixture
def faiss():
    return pytest.importorskip("faiss", reason="faiss-cpu is not installed (the optional `search` extra)")


def brute(flat, pool):
    return torch.cdist(flat.float(), pool.float(), compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def kernels(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale


def raw_faiss(faiss, flat, pool, k=1):
    """faiss alone (the uncertified peer): its k best labels."""
    index = faiss.IndexFlatL2(pool.shape[1])
    index.add(pool.float().contiguous().numpy())
    return torch.from_numpy(index.search(flat.float().contiguous().numpy(), k)[1])


def counting(monkeypatch):
    """Spy on the reference fallback of the faiss path: the number of rows it recomputed."""
    handed = []
    real = search_faiss._reference_rows
    monkeypatch.setattr(search_faiss, "_reference_rows", lambda x, p: handed.append(x.shape[0]) or real(x, p))
    return handed


@pytest.mark.parametrize("d", [1, 4, 9, 49, 1000])
def test_the_certificate_constant_covers_faiss_distances(d):
    """certified_fast(W_hi, f1, f2) implies f2 - f1 > k1·f1 + 8γ(hi + lo)/lo·W + e, the ordering test for
    distances within γ(8W + 2D) + η of the true ones: its constant c must be at least 8γ(hi + lo)/lo."""
    b = _Bounds(d, search_faiss.TINY)
    lo, hi = b.a / (1 + 2 * b.gs), b.b / (1 - 2 * b.gs)
    assert b.c >= b.k1 + 8 * b.gs * (hi + lo) / lo
    assert b.eta_s >= (8 * d + 8) * 2.0**-126  # every operation of faiss's norms, sgemm and sum flushed to zero


@pytest.mark.parametrize("d", [1, 4, 9, 49])
@pytest.mark.parametrize("n", [1, 2, 16, 512])
def test_equals_nearest_on_random_data(faiss, d, n):
    pool = kernels(n, d, 1.0, seed=d * 1000 + n)
    for scale, rows in [(0.05, 300), (1.0, 1000), (3.0, 128000 // d + 7)]:  # the last one: faiss's sgemm path
        flat = kernels(rows, d, scale, seed=n + d)
        expected = nearest(flat, pool)
        assert torch.equal(search_faiss.nearest_faiss(flat, pool), expected)
        assert torch.equal(expected, brute(flat, pool))


def test_backend_switch(faiss, monkeypatch):
    flat, pool = kernels(500, 9, 0.3, seed=1), kernels(64, 9, 1.0, seed=2)
    expected = nearest(flat, pool)
    for backend in ("faiss", "auto"):
        assert torch.equal(search_faiss.nearest(flat, pool, backend=backend), expected)
    assert search_faiss.use_faiss("auto", flat) and not search_faiss.use_faiss("auto", flat[:, :1])
    assert not search_faiss.use_faiss("torch", flat)
    with pytest.raises(ValueError, match="backend"):
        search_faiss.nearest(flat, pool, backend="gpu")
    monkeypatch.setattr(search_faiss, "faiss", None)
    assert not search_faiss.use_faiss("auto", flat)
    assert torch.equal(search_faiss.nearest(flat, pool, backend="auto"), expected)
    with pytest.raises(ModuleNotFoundError, match="faiss-cpu"):
        search_faiss.nearest(flat, pool, backend="faiss")


@pytest.mark.parametrize("d", [1, 9])
def test_duplicated_pool_rows_and_exact_ties(faiss, d):
    pool = kernels(64, d, 1.0, seed=1)
    pool = torch.cat([pool, pool[torch.arange(0, 64, 3)], pool[:5]])  # duplicated pool rows, later indices
    flat = kernels(400, d, 0.7, seed=2)
    flat[:150] = pool[torch.randint(0, pool.shape[0], (150,), generator=torch.Generator().manual_seed(3))]
    idx = search_faiss.nearest_faiss(flat, pool)
    assert torch.equal(idx, nearest(flat, pool)) and (idx[:150] < 64).all()
    g = torch.Generator().manual_seed(4)
    grid = torch.randint(-3, 4, (200, d), generator=g).float()  # many distinct kernels at exactly equal distances
    flat = torch.randint(-6, 7, (500, d), generator=g).float() / 2
    assert torch.equal(search_faiss.nearest_faiss(flat, grid), nearest(flat, grid))


@pytest.mark.parametrize("rows", [300, 20000])
def test_near_ties_go_to_the_reference(faiss, monkeypatch, rows):
    """Kernels on the bisector of two pool kernels, up to 1e-7: the two distances differ by about an ulp, so
    faiss's rounding picks the wrong one on some rows; the certificate must hand exactly those rows (and more)
    to the reference. Without it the result would be faiss's own, which differs."""
    g = torch.Generator().manual_seed(5)
    e = torch.randn(9, generator=g)
    pool = torch.cat([(e / e.norm() * 0.5)[None], (-e / e.norm() * 0.5)[None], 5 + torch.randn(30, 9, generator=g)])
    w = torch.randn(rows, 9, generator=g) * 1e-7
    expected = brute(w, pool)
    raw = raw_faiss(faiss, w, pool)[:, 0]
    assert not torch.equal(raw, expected)  # faiss alone is wrong here
    handed = counting(monkeypatch)
    idx = search_faiss.nearest_faiss(w, pool)
    assert torch.equal(idx, expected) and torch.equal(idx, nearest(w, pool)) and set(idx.tolist()) == {0, 1}
    assert sum(handed) >= int((raw != expected).sum()) > 0
    assert sum(handed) == rows  # every row is a near-tie here


def test_well_separated_rows_are_certified_without_the_reference(faiss, monkeypatch):
    handed = counting(monkeypatch)
    flat, pool = kernels(2000, 9, 0.2, seed=6), kernels(16, 9, 1.0, seed=7)
    assert torch.equal(search_faiss.nearest_faiss(flat, pool), nearest(flat, pool))
    assert sum(handed) < 20  # only the rare close calls


@pytest.mark.parametrize("d", [1, 9])
def test_cancellation_far_from_the_origin(faiss, monkeypatch, d):
    """Kernels and pool far from 0: faiss's ||w||² + ||p||² - 2 w·p (its sgemm path, N·d >= 128000) loses most
    digits and picks wrong kernels; the certificate hands those rows to the reference."""
    g = torch.Generator().manual_seed(30 + d)
    rows = 128000 // d + 1
    pool = 300.0 + torch.randn(128, d, generator=g) * 0.01
    flat = 300.0 + torch.randn(rows, d, generator=g) * 0.01
    expected = brute(flat, pool)
    raw = raw_faiss(faiss, flat, pool)[:, 0]
    assert not torch.equal(raw, expected)  # the data really defeats faiss's formula
    handed = counting(monkeypatch)
    assert torch.equal(search_faiss.nearest_faiss(flat, pool), expected)
    assert torch.equal(nearest(flat, pool), expected)
    assert sum(handed) >= int((raw != expected).sum())


@pytest.mark.parametrize("d", [1, 9])
def test_non_finite_huge_and_subnormal_values_follow_nearest(faiss, d):
    flat, pool = kernels(200, d, 0.1, seed=14), kernels(30, d, 1.0, seed=15)
    flat[3, 0], flat[7, -1], flat[9, 0] = float("nan"), float("inf"), -float("inf")
    assert torch.equal(search_faiss.nearest_faiss(flat, pool), nearest(flat, pool))
    assert torch.equal(nearest(flat, pool), brute(flat, pool))
    bad = pool.clone()
    bad[11, 0] = float("nan")  # the reference then answers 11 everywhere; faiss alone would skip that kernel
    clean = kernels(200, d, 0.1, seed=16)
    assert torch.equal(search_faiss.nearest_faiss(clean, bad), nearest(clean, bad))
    assert (nearest(clean, bad) == 11).all()
    bad[11, 0] = float("inf")
    assert torch.equal(search_faiss.nearest_faiss(clean, bad), nearest(clean, bad))
    for scale in (1e30, 1e-39, 1e-42):  # overflowing squares, subnormal inputs
        x, p = clean * scale, pool * scale
        assert torch.equal(search_faiss.nearest_faiss(x, p), nearest(x, p))
    mixed = clean.clone()
    mixed[0, 0] = 1e-40  # one subnormal value among normal ones
    assert torch.equal(search_faiss.nearest_faiss(mixed, pool), nearest(mixed, pool))


def test_edge_shapes_errors_and_other_dtypes(faiss):
    pool = kernels(5, 9, 1.0, seed=16)
    assert search_faiss.nearest_faiss(torch.empty(0, 9), pool).shape == (0,)
    assert search_faiss.nearest_faiss(kernels(4, 9, 1.0, seed=17), pool[:1]).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="d=4"):
        search_faiss.nearest_faiss(torch.zeros(3, 4), pool)
    flat = kernels(300, 9, 0.3, seed=18)
    assert torch.equal(search_faiss.nearest_faiss(flat.double(), pool.double()), nearest(flat, pool))
    bf = flat.bfloat16()
    assert torch.equal(search_faiss.nearest_faiss(bf, pool), nearest(bf, pool))
    t = flat.t().contiguous().t()  # not contiguous
    assert torch.equal(search_faiss.nearest_faiss(t, pool), nearest(flat, pool))
