"""Eq. 1 search: equal to the brute-force cdist argmin (ties included), chunked, fp32, and the exact cache."""

import math

import pytest
import torch

from nws import search, search_native
from nws.cache import SearchCache
from nws.search import nearest, nearest_with_margin


@pytest.fixture(params=[True, False], ids=["native", "torch"])
def native(request):
    """Each exactness test runs on both CPU paths: the fused C++ kernel (`make setup` builds it; a missing or stale
    build fails here rather than silently testing the torch path twice) and the torch path."""
    if request.param:
        assert search_native.default_kernel() is not None, "the native search kernel is not built: make setup"
    return request.param


def brute(flat, pool):
    return torch.cdist(flat.float(), pool.float(), compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def kernels(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale


@pytest.mark.parametrize("d", [1, 2, 9, 49])
@pytest.mark.parametrize("n", [2, 7, 512])
def test_equals_brute_force_on_random_data(d, n, native):
    pool = kernels(n, d, 1.0, seed=d * 1000 + n)
    for scale, chunk in [(0.05, None), (1.0, 37), (3.0, 1)]:
        flat = kernels(300, d, scale, seed=n + d)
        assert torch.equal(nearest(flat, pool, chunk=chunk, native=native), brute(flat, pool))


@pytest.mark.parametrize("d", [1, 9])
def test_ties_go_to_the_lowest_index_like_brute_force(d, native):
    pool = kernels(64, d, 1.0, seed=1)
    pool = torch.cat([pool, pool[torch.arange(0, 64, 3)], pool[:5]])  # duplicated pool rows, later indices
    flat = kernels(400, d, 0.7, seed=2)
    flat[:150] = pool[torch.randint(0, pool.shape[0], (150,), generator=torch.Generator().manual_seed(3))]
    idx = nearest(flat, pool, chunk=50, native=native)
    assert torch.equal(idx, brute(flat, pool))
    assert (idx[:150] < 64).all()  # a flat row equal to a duplicated kernel takes its first copy


def test_exact_distance_ties_between_distinct_kernels(native):
    """On a coarse grid many distinct pool kernels are at exactly the same distance; rounding decides nothing."""
    g = torch.Generator().manual_seed(4)
    for d in (1, 2, 9):
        pool = torch.randint(-3, 4, (200, d), generator=g).float()
        flat = torch.randint(-6, 7, (500, d), generator=g).float() / 2
        assert torch.equal(nearest(flat, pool, native=native), brute(flat, pool))


def test_near_ties_below_fp32_resolution(monkeypatch, native):
    """Kernels on the bisector of the two nearest pool kernels, up to 1e-7: the two distances differ by about an
    ulp, so only the reference's own rounding decides, and those rows must be handed to it."""
    g = torch.Generator().manual_seed(5)
    e = torch.randn(9, generator=g)
    pool = torch.cat([(e / e.norm() * 0.5)[None], (-e / e.norm() * 0.5)[None], 5 + torch.randn(30, 9, generator=g)])
    w = torch.randn(300, 9, generator=g) * 1e-7
    handed = []
    real = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b, **kw: handed.append(a.shape[0]) or real(a, b, **kw))
    idx = nearest(w, pool, native=native)
    monkeypatch.undo()
    assert torch.equal(idx, brute(w, pool)) and set(idx.tolist()) == {0, 1}
    assert sum(handed) > 0


@pytest.mark.parametrize("d", [1, 9])
def test_cancellation_far_from_the_origin(d, native):
    """Kernels and pool far from 0: ||p||² - 2 w·p loses most digits, so the expanded scores alone would often
    pick the wrong kernel; the certified bound must send those rows to the reference."""
    g = torch.Generator().manual_seed(30 + d)
    pool = 300.0 + torch.randn(128, d, generator=g) * 0.01
    flat = 300.0 + torch.randn(400, d, generator=g) * 0.01
    p64, f64 = pool.double(), flat.double()
    expanded = ((p64 * p64).sum(1).float() - 2 * (flat @ pool.t())).argmin(1)
    assert not torch.equal(expanded, brute(flat, pool))  # the data really defeats the naive formula
    assert torch.equal(nearest(flat, pool, native=native), brute(flat, pool))
    assert torch.equal(nearest(f64, p64, native=native), brute(flat, pool))


def test_scores_never_exceed_chunk_times_pool(monkeypatch):
    """Every score block the torch path writes (the `out` of its matmuls) holds at most chunk × n values (the
    native kernel writes none)."""
    blocks = []
    for name in ("addmm", "baddbmm"):
        real = getattr(torch, name)

        def spy(*args, _real=real, **kwargs):
            blocks.append(kwargs["out"].numel())
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    flat, pool = kernels(1000, 9, 0.1, seed=6), kernels(512, 9, 1.0, seed=7)
    assert torch.equal(nearest(flat, pool, chunk=64, native=False), brute(flat, pool))
    assert len(blocks) == math.ceil(1000 / 64) and max(blocks) <= 64 * 512
    blocks.clear()
    chunk = search.default_chunk(512)
    many = kernels(3 * chunk + 5, 9, 0.1, seed=8)
    assert torch.equal(nearest(many, pool, native=False), brute(many, pool))
    assert len(blocks) == 4 and max(blocks) <= chunk * 512
    blocks.clear()
    search._top2_rows(flat, pool, 100)  # the CUDA layout, run here on CPU
    assert len(blocks) == 10 and max(blocks) <= 100 * 512


@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count(threads, native):
    """The CPU path splits each chunk in one batch entry per thread; odd counts leave a tail chunk."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flat, pool = kernels(1001, 9, 0.2, seed=40), kernels(512, 9, 1.0, seed=41)
        for chunk in (None, 100, 7):
            assert torch.equal(nearest(flat, pool, chunk=chunk, native=native), brute(flat, pool))
    finally:
        torch.set_num_threads(before)


def test_both_score_layouts_agree():
    """The CPU pool-major path and the row-major path (used on CUDA) find the same best and runner-up."""
    flat, pool = kernels(777, 9, 0.2, seed=8), kernels(100, 9, 1.0, seed=9)
    a, b = search._top2_cpu(flat, pool, 100), search._top2_rows(flat, pool, 64)
    assert torch.equal(a[1], b[1])
    for x, y in ((a[0], b[0]), (a[2], b[2])):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


def test_fp32_under_autocast_low_precision_inputs_and_matmul_settings(native):
    flat, pool = kernels(500, 9, 0.1, seed=10), kernels(512, 9, 1.0, seed=11)
    expected = brute(flat, pool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest(flat, pool, native=native), expected)
    bf = flat.bfloat16()
    assert torch.equal(nearest(bf, pool, native=native), brute(bf.float(), pool))
    old = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        assert torch.equal(nearest(flat, pool, native=native), expected)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # the caller's setting is restored
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


def test_no_autograd_graph():
    flat = kernels(50, 9, 0.1, seed=12).requires_grad_()
    idx, margin = nearest_with_margin(flat * 2, kernels(20, 9, 1.0, seed=13))
    assert idx.grad_fn is None and margin.grad_fn is None and not margin.requires_grad


@pytest.mark.parametrize("d", [1, 9])
def test_non_finite_values_follow_the_reference(d, native):
    flat, pool = kernels(20, d, 0.1, seed=14), kernels(30, d, 1.0, seed=15)
    flat[3, 0], flat[7, -1] = float("nan"), float("inf")
    assert torch.equal(nearest(flat, pool, native=native), brute(flat, pool))
    pool[11, 0] = float("nan")  # the reference then answers 11 everywhere (argmin takes NaN as the minimum)
    assert torch.equal(nearest(flat, pool, native=native), brute(flat, pool))


def test_edge_shapes_and_errors():
    pool = kernels(5, 9, 1.0, seed=16)
    assert nearest(torch.empty(0, 9), pool).shape == (0,)
    idx, margin = nearest_with_margin(kernels(4, 9, 1.0, seed=17), pool[:1])
    assert idx.tolist() == [0, 0, 0, 0] and torch.isinf(margin).all()
    with pytest.raises(ValueError, match="d=4"):
        nearest(torch.zeros(3, 4), pool)
    with pytest.raises(ValueError, match="empty"):
        nearest(torch.zeros(3, 9), torch.zeros(0, 9))
    with pytest.raises(ValueError, match="chunk"):
        nearest(torch.zeros(3, 9), pool, chunk=0)


def test_margin_is_the_half_gap_and_keeps_the_index():
    flat, pool = kernels(400, 9, 0.3, seed=18), kernels(64, 9, 1.0, seed=19)
    idx, margin = nearest_with_margin(flat, pool)
    dist = torch.cdist(flat.double(), pool.double())
    top = dist.topk(2, dim=1, largest=False).values
    half_gap = (top[:, 1] - top[:, 0]) / 2
    assert (margin.double() <= half_gap).all()
    assert torch.allclose(margin.double(), half_gap, rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(20)
    for _ in range(5):  # any move shorter than the margin keeps the reference's answer
        step = torch.randn(flat.shape, generator=g)
        step *= (margin * 0.999 / step.norm(dim=1))[:, None]
        assert torch.equal(brute(flat + step, pool), idx)
    tied = torch.cat([pool[:1], pool[:1]])
    assert (nearest_with_margin(flat, tied)[1] == 0).all()


@pytest.mark.parametrize("d", [1, 9])
def test_cache_stays_exact_over_a_random_walk(d):
    g = torch.Generator().manual_seed(21 + d)
    pool = torch.randn(256, d, generator=g)
    w = torch.randn(3000, d, generator=g) * 0.3
    cache = SearchCache(chunk=500)
    searched = []
    for step in range(40):
        assert torch.equal(cache(w, pool), brute(w, pool)), step
        searched.append(cache.last_searched)
        size = [1e-4, 1e-3, 1e-2, 0.1][step % 4]
        w = w - size * torch.randn(w.shape, generator=g)
        if step % 9 == 8:  # a large jump of a few kernels
            rows = torch.randint(0, w.shape[0], (50,), generator=g)
            w[rows] = torch.randn(50, d, generator=g)
    assert searched[0] == w.shape[0]
    assert min(searched[1:]) < w.shape[0] // 10  # the shortcut skips most kernels after small steps


def test_cache_restarts_on_new_shape_pool_and_reset():
    g = torch.Generator().manual_seed(23)
    pool = torch.randn(64, 9, generator=g)
    w = torch.randn(500, 9, generator=g) * 0.2
    cache = SearchCache()
    first = cache(w, pool)
    assert torch.equal(cache(w, pool), first) and cache.last_searched == 0
    w2 = torch.randn(300, 9, generator=g)
    assert torch.equal(cache(w2, pool), brute(w2, pool)) and cache.last_searched == 300
    pool[:32] = pool[32:].flip(0)  # the pool moved in place, no reset: the cache notices
    assert torch.equal(cache(w2, pool), brute(w2, pool)) and cache.last_searched == 300
    cache.reset()
    assert torch.equal(cache(w2, pool), brute(w2, pool)) and cache.last_searched == 300
    off = SearchCache(enabled=False)
    for _ in range(2):
        assert torch.equal(off(w2, pool), brute(w2, pool)) and off.last_searched == 300


def test_cache_results_are_not_modified_later():
    g = torch.Generator().manual_seed(24)
    pool = torch.randn(32, 4, generator=g)
    w = torch.randn(200, 4, generator=g) * 0.5
    cache = SearchCache()
    first = cache(w, pool)
    kept = first.clone()
    cache(w + torch.randn(w.shape, generator=g), pool)
    assert torch.equal(first, kept)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_brute_force_and_cache_follows_the_device():
    flat, pool = kernels(5000, 9, 0.1, seed=25), kernels(512, 9, 1.0, seed=26)
    cuda_idx = nearest(flat.cuda(), pool.cuda())
    assert cuda_idx.is_cuda and torch.equal(cuda_idx.cpu(), brute(flat, pool))
    cache = SearchCache()
    assert torch.equal(cache(flat, pool), brute(flat, pool))
    assert torch.equal(cache(flat.cuda(), pool.cuda()).cpu(), brute(flat, pool)) and cache.last_searched == 5000


def test_bench_quick_runs():
    from bench import search as bench_search

    threads = torch.get_num_threads()
    table = bench_search.main(["--quick", "--threads", "1"])
    assert torch.get_num_threads() == threads
    for row in ("plain step", "full search every step", "cached search", "official-style step", "FLOP floor",
                "search alone", "official-style search", "after one SGD step", "pool-distillation step",
                "exact, native kernel", "exact, torch path"):
        assert row in table


def test_bench_profile_names_the_native_kernel_among_the_extra_time():
    from bench import search as bench_search

    table = bench_search.main(["--profile", "--quick", "--threads", "1"])
    extra = {line.split(" | ")[0].strip("| "): float(line.rsplit("|", 2)[1]) for line in table.splitlines()
             if line.startswith("| ") and line.rsplit("|", 2)[1].strip() not in ("extra ms", "---:")}
    assert extra["nws.search_native.top2"] > 0  # the kernel ran, in the distillation step only
    with pytest.raises(SystemExit):
        bench_search.main(["--profile", "--quick", "--write"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_search_is_fp32_under_bf16_autocast_and_tf32():
    """On the GPU, bf16 autocast and TF32 matmuls (both common in training scripts) must not reach the search: the
    indices equal the CPU brute force, and the caller's TF32 setting is restored."""
    flat, pool = kernels(5000, 9, 0.1, seed=27), kernels(512, 9, 1.0, seed=28)
    expected = brute(flat, pool)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(nearest(flat.cuda(), pool.cuda()).cpu(), expected)
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        assert torch.equal(nearest(flat.cuda(), pool.cuda()).cpu(), expected)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_quick_runs_on_the_gpu():
    from bench import search as bench_search

    table = bench_search.main(["--quick", "--device", "cuda"])
    assert "Machine: " in table and torch.cuda.get_device_name(0) in table and "cached search" in table


def test_bench_refuses_a_device_this_torch_lacks(capsys):
    from bench import search as bench_search

    if torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench_search.main(["--quick", "--device", "cuda", "--clock", "cpu"])
        assert "--clock cpu times the host process" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit):
            bench_search.main(["--quick", "--device", "cuda"])
        assert "--device cuda: this torch sees no CUDA device" in capsys.readouterr().err
