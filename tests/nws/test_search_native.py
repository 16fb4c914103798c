"""The fused C++ search kernel (nws/search_native.py): built from its source, every instruction-set variant this CPU
can run gives the scores of Eq. 1 and their best two, and `nearest` through it equals the reference on the inputs
that defeat naive searches; a missing or stale build is refused with a warning, never used."""

import logging
import math

import pytest
import torch

from nws import search_native
from nws.search import nearest

ORDER = ["DEFAULT", "AVX2", "AVX512"]  # each instruction set includes the ones before it


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A fresh build of the current source (the build itself is under test; `make setup` builds the default one)."""
    return search_native.build(tmp_path_factory.mktemp("native") / "top2.so")


def runnable():
    """The variants this CPU can execute: torch's own capability and every one below it."""
    cap = torch.backends.cpu.get_cpu_capability()
    names = list(search_native.variants())
    if cap not in ORDER:
        return ["DEFAULT"]
    return [c for c in ORDER[: ORDER.index(cap) + 1] if c in names]


def reference_top2(x, p):
    """Best score, its index and the second-best score in float64 (scores s = ||p||² - 2 w·p)."""
    s = p.double().square().sum(1)[None] - 2 * x.double() @ p.double().t()
    v, i = s.topk(min(2, p.shape[0]), dim=1, largest=False)
    return v[:, 0], i[:, 0], v[:, -1]


def test_the_build_has_a_variant_per_instruction_set_and_loads_this_cpus(library):
    for cap in runnable():
        k = search_native.load(library, capability=cap)
        assert k is not None and k.name == search_native.variants()[cap].suffix
    assert search_native.load(library) is not None


@pytest.mark.parametrize("d", [2, 3, 4, 9, 25, 49])
@pytest.mark.parametrize("n", [2, 15, 17, 512])
def test_every_variant_gives_the_scores_and_their_best_two(library, d, n):
    """Scores within the fp32 rounding of the float64 ones, the best index exactly where the gap is clear; row counts
    that leave a short tail of rows per pass and per thread."""
    g = torch.Generator().manual_seed(d * 100 + n)
    x, p = torch.randn(1003, d, generator=g) * 0.3, torch.randn(n, d, generator=g)
    r1, ri, r2 = reference_top2(x, p)
    scale = (p.square().sum(1).max() + 2 * x.norm(dim=1)[:, None] * p.norm(dim=1).max()).double()[:, 0]
    for cap in runnable():
        k = search_native.load(library, capability=cap)
        for threads in (1, 3):
            v1, idx, v2 = search_native.top2(x, p, k, threads=threads)
            tol = scale * (d + 3) * 2.0**-23
            assert ((v1.double() - r1).abs() <= tol).all() and ((v2.double() - r2).abs() <= tol).all()
            clear = (r2 - r1) > 4 * tol
            assert clear.float().mean() > 0.9  # the check below covers most rows
            assert torch.equal(idx[clear], ri[clear])


def test_ties_keep_the_first_index_and_leave_no_gap(library):
    p = torch.randn(40, 9, generator=torch.Generator().manual_seed(1))
    p = torch.cat([p, p[:8]])  # rows 40-47 repeat rows 0-7
    x = p[:8].clone()
    for cap in runnable():
        v1, idx, v2 = search_native.top2(x, p, search_native.load(library, capability=cap), threads=1)
        assert idx.tolist() == list(range(8)) and torch.equal(v1, v2)


def test_a_non_finite_pool_certifies_nothing(library):
    g = torch.Generator().manual_seed(12)
    x, p = torch.randn(10, 9, generator=g), torch.randn(30, 9, generator=g)
    p[4, 2] = math.inf
    v1, _, _ = search_native.top2(x, p, search_native.load(library), threads=1)
    assert torch.isnan(v1).all()


def test_nearest_through_the_kernel_equals_the_reference_and_the_torch_path():
    """Random data at three scales, far-from-origin cancellation, exact ties on a grid: the default search (native)
    and the torch path both equal the brute-force cdist argmin."""
    assert search_native.default_kernel() is not None, "the native search kernel is not built: make setup"
    g = torch.Generator().manual_seed(7)
    cases = [(torch.randn(2000, 9, generator=g) * s, torch.randn(512, 9, generator=g)) for s in (0.05, 1.0, 4.0)]
    cases.append((300 + torch.randn(500, 9, generator=g) * 0.01, 300 + torch.randn(128, 9, generator=g) * 0.01))
    cases.append((torch.randint(-6, 7, (500, 4), generator=g).float() / 2,
                  torch.randint(-3, 4, (200, 4), generator=g).float()))
    for x, p in cases:
        brute = torch.cdist(x, p, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
        assert torch.equal(nearest(x, p), brute)
        assert torch.equal(nearest(x, p, native=False), brute)


def test_a_missing_or_stale_library_is_refused_with_a_warning(library, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="nws.search_native")
    assert search_native.load(tmp_path / "absent.so") is None
    assert "not built" in caplog.text
    caplog.clear()
    monkeypatch.setattr(search_native, "source_hash", lambda: "0" * 16)  # the source changed since the build
    assert search_native.load(library) is None
    assert "another version" in caplog.text
    monkeypatch.undo()
    monkeypatch.setenv("NWS_NATIVE_SEARCH", "0")
    assert search_native.default_kernel.__wrapped__() is None  # the torch path on purpose


def test_first_use_builds_a_missing_library_and_survives_a_missing_compiler(tmp_path, monkeypatch, caplog):
    """Where `make setup` did not build the current source (a conda install, an edited source), the first search
    builds it; without a compiler it warns and the torch path serves."""
    caplog.set_level(logging.WARNING, logger="nws.search_native")
    path = tmp_path / "first.so"
    k = search_native.ensure(path)
    assert k is not None and path.exists()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    assert search_native.ensure(tmp_path / "other.so") is None
    assert "could not be built" in caplog.text and not (tmp_path / "other.so").exists()
    assert search_native.library_path().name == f"_top2-{search_native.source_hash()}.so"


def test_a_failing_compiler_names_the_command(tmp_path):
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        search_native.build(tmp_path / "x.so", compiler=str(tmp_path / "no-such-c++"))


def test_with_the_native_kernel_moved_pools_are_searched_in_full():
    """The search cache's default on CPU where the fused kernel is built: a moved pool is searched in full every
    call (cheaper than the checks), a fixed pool keeps the moved-rows shortcut, and every answer is the full
    search's; asked to, it tracks the moves."""
    from nws.cache import SearchCache

    assert search_native.default_kernel() is not None, "the native search kernel is not built: make setup"
    g = torch.Generator().manual_seed(3)
    pool, w = torch.randn(64, 9, generator=g), torch.randn(500, 9, generator=g) * 0.8
    cache = SearchCache()
    assert torch.equal(cache(w, pool), reference(w, pool)) and cache.last_searched == 500
    w = w + 1e-4 * torch.randn(w.shape, generator=g)
    assert torch.equal(cache(w, pool), reference(w, pool)) and cache.last_searched < 50  # fixed pool: shortcut
    for _ in range(3):
        pool = pool + 1e-4 * torch.randn(pool.shape, generator=g)
        w = w + 1e-4 * torch.randn(w.shape, generator=g)
        assert torch.equal(cache(w, pool), reference(w, pool)) and cache.last_searched == 500
    assert torch.equal(cache(w, pool), reference(w, pool)) and cache.last_searched == 500  # moved once: stays full
    tracked = SearchCache(track_moves=True)
    tracked(w, pool)
    pool = pool + 1e-6 * torch.randn(pool.shape, generator=g)
    assert torch.equal(tracked(w, pool), reference(w, pool)) and tracked.last_searched < 500


def reference(flat, pool):
    return torch.cdist(flat, pool, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def test_a_variant_the_compiler_rejects_is_left_out_and_the_next_narrower_serves(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="nws.search_native")
    table = {"AVX512": search_native.Variant(("-march=no-such-cpu",), 16, 6, "wide"),
             "DEFAULT": search_native.Variant((), 4, 4, "generic")}
    monkeypatch.setattr(search_native, "variants", lambda: table)
    path = search_native.build(tmp_path / "partial.so")
    assert "wide variant" in caplog.text
    k = search_native.load(path, capability="AVX512")
    assert k is not None and k.name == "generic"
    g = torch.Generator().manual_seed(11)
    x, p = torch.randn(100, 9, generator=g), torch.randn(30, 9, generator=g)
    assert torch.equal(search_native.top2(x, p, k)[1], reference_top2(x, p)[1])
