"""The search cache on a moving pool (issue 20): exact at every step of pool distillation, restarts included, while
searching only the rows a move can affect; pools bit-identical with the cache on and off."""

import math

import pytest
import torch
from torch import nn

import nws
from nws import search_native
from nws.cache import SearchCache


@pytest.fixture(autouse=True, params=["native", "torch"])
def path(request, monkeypatch):
    """Every test on both CPU search paths: the native kernel (`make setup` builds it) and the torch code (as on
    CUDA or without a build)."""
    if request.param == "torch":
        monkeypatch.setattr(search_native, "default_kernel", lambda: None)
    else:
        assert search_native.default_kernel() is not None, "the native search kernel is not built: make setup"
    return request.param


def brute(flat, pool):
    return torch.cdist(flat.float(), pool.float(), compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


def _distill(steps, enabled, check=False, seed=0):
    """A short pool distillation of a two-conv net: SGD on W, EMA on the pools, dead-kernel restarts every 3 steps
    (a usage of 1.05 restarts kernels that keep only their own sampled kernel). Per step and layer: rows searched."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(), nn.Conv2d(16, 32, 3, bias=False))
    snet = nws.convert(net, pool_size=32, seed=seed, pool_init="sample")
    distiller = nws.PoolDistiller(snet, restart_every=3, dead_usage=1.05, seed=seed)
    layers = dict(nws.nws_layers(snet))
    for layer in layers.values():
        layer.search_cache.enabled = enabled
        layer.search_cache.track_moves = True  # the checks under test (on CPU with the native kernel: off by default)
    opt = torch.optim.SGD(snet.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    searched = []
    for step in range(steps):
        loss = snet(torch.randn(4, 8, 7, 7, generator=g)).square().mean() + nws.search_loss(snet)
        for name, layer in layers.items():
            if check:
                assert torch.equal(layer.indices, brute(layer.flat_weight().detach(), layer.pool)), (step, name)
        searched.append({name: layer.search_cache.last_searched for name, layer in layers.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        distiller.step()
    return snet, distiller, searched


@pytest.mark.parametrize("history", [32, 3])
def test_every_step_of_distillation_equals_the_full_search_and_most_rows_are_skipped(history, monkeypatch):
    """With a history of 3 pools most rows are re-certified against a newer pool instead of searched again."""
    monkeypatch.setattr("nws.drift.HISTORY", history)
    snet, distiller, searched = _distill(30, enabled=True, check=True)
    assert sum(distiller.restarts.values()) > 0  # restarts moved pool kernels (jumps) during the run
    rows = {name: layer.num_groups for name, layer in nws.nws_layers(snet)}
    for name, n in rows.items():  # the cache worked on most steps of every layer (a full search rebases it)
        skipped = [step[name] < n for step in searched[1:]]
        assert sum(skipped) >= 2 / 3 * len(skipped), (name, searched)
    total = sum(sum(step.values()) for step in searched[1:])
    assert total < 0.6 * sum(rows.values()) * (len(searched) - 1)  # ... and skipped the search of most rows


def test_pools_and_indices_are_bit_identical_with_the_cache_on_and_off():
    on, dist_on, _ = _distill(20, enabled=True)
    off, dist_off, searched = _distill(20, enabled=False)
    assert all(n == layer.num_groups for step in searched for (name, layer), n in
               zip(nws.nws_layers(off), step.values(), strict=True))  # off: the full search every step
    assert dist_on.restarts == dist_off.restarts and sum(dist_on.restarts.values()) > 0
    for key, value in on.state_dict().items():
        assert torch.equal(value, off.state_dict()[key]), key  # pools, indices and weights


def test_distill_mode_looks_up_the_moved_pool_when_no_index_changed():
    """The cache keeps the indices (the very same tensor) while the pool moved: K must still be the new pool rows."""
    snet = nws.set_mode(nws.convert(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False)), pool_size=16, seed=0,
                                    pool_init="sample"), "distill")
    layer = snet[0]
    layer.search_cache.track_moves = True  # the cache keeps its rows across the move (not the native default)
    layer.effective_weight()
    with torch.no_grad():
        layer.pool.mul_(1 + 1e-6)
    w = layer.effective_weight()
    assert layer.search_cache.last_searched == 0
    assert torch.equal(w.detach(), layer.pool[layer.indices].reshape(w.shape))


def _drifting(seed, n=64, d=9, rows=2000):
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(n, d, generator=g)
    w = pool[torch.randint(0, n, (rows,), generator=g)] + 0.3 * torch.randn(rows, d, generator=g)
    return g, pool, w


def test_a_kernel_that_jumps_onto_a_row_takes_it_and_leaves_far_rows_alone():
    g, pool, w = _drifting(1)
    cache = SearchCache(track_moves=True)
    cache(w, pool)
    for step, row in enumerate((7, 100, 1500)):
        pool = pool + 1e-4 * torch.randn(pool.shape, generator=g)  # every kernel drifts a little (EMA-like)
        j = (int(cache.indices[row]) + 1 + step) % pool.shape[0]
        pool[j] = w[row]  # a restart onto this row's temporary kernel
        before = cache.indices
        idx = cache(w, pool)
        assert torch.equal(idx, brute(w, pool)) and idx[row] == j
        # the rows that lost kernel j or are now closer to it (plus near-ties, if any): about 40 of the 2000 rows
        changed = int((idx != before).sum())
        assert changed <= cache.last_searched <= changed + 10, (step, changed, cache.last_searched)


def test_one_jumped_kernel_does_not_invalidate_rows_far_from_it():
    g, pool, w = _drifting(2)
    cache = SearchCache(track_moves=True)
    cache(w, pool)
    pool = pool.clone()
    had = int((cache.indices == 5).sum())
    pool[5] = 50.0  # far from every row: only the rows that had kernel 5 (and near-ties, if any) are searched
    assert torch.equal(cache(w, pool), brute(w, pool))
    assert 0 < had <= cache.last_searched <= had + 5


def test_duplicated_pool_kernels_tie_to_the_lowest_index_while_the_pool_moves():
    g, pool, w = _drifting(3, n=40)
    pool = torch.cat([pool, pool[::4]])  # later duplicates: ties to the earlier copy
    w[:300] = pool[torch.randint(0, pool.shape[0], (300,), generator=g)]  # rows exactly on kernels
    cache = SearchCache(track_moves=True)
    for step in range(12):
        assert torch.equal(cache(w, pool), brute(w, pool)), step
        shift = 1e-4 * torch.randn(pool.shape[1], generator=g)
        pool = pool + shift  # the duplicates move together and stay duplicates
        if step == 6:
            pool[3] = pool[41]  # a jump that makes a new duplicate pair (3 < 41)
        w = w + 1e-5 * torch.randn(w.shape, generator=g)
    assert cache.last_searched < w.shape[0]


def test_non_finite_rows_and_kernels_are_searched_again():
    g, pool, w = _drifting(4)
    cache = SearchCache(track_moves=True)
    cache(w, pool)
    w = w.clone()
    w[10], w[11, 3], w[12, 0] = math.nan, math.inf, -math.inf
    pool = pool + 1e-4 * torch.randn(pool.shape, generator=g)
    assert torch.equal(cache(w, pool), brute(w, pool)) and cache.last_searched >= 3
    pool = pool + 1e-4 * torch.randn(pool.shape, generator=g)
    assert torch.equal(cache(w, pool), brute(w, pool)) and cache.last_searched >= 3  # still non-finite: again
    pool[9, 2] = math.nan
    assert torch.equal(cache(w, pool), brute(w, pool))
    pool[9] = torch.randn(pool.shape[1], generator=g)  # back to finite
    assert torch.equal(cache(w, pool), brute(w, pool))


def test_rows_compared_with_a_pool_that_left_the_history_are_searched_again(monkeypatch):
    monkeypatch.setattr("nws.drift.HISTORY", 4)
    g, pool, w = _drifting(5, rows=500)
    cache = SearchCache(track_moves=True)
    searched = []
    for _ in range(12):
        assert torch.equal(cache(w, pool), brute(w, pool))
        searched.append(cache.last_searched)
        pool = pool + 1e-5 * torch.randn(pool.shape, generator=g)
    assert (cache.when >= cache.drift.latest - 3).all()  # every row's pool is still in the history
    assert max(searched[1:]) < w.shape[0] // 2


def test_a_row_recompared_with_a_newer_pool_remembers_a_jumped_kernel_near_it(monkeypatch):
    """A kernel jumps next to row r (not nearer than its own): r is re-certified against that pool (its old one
    leaves the history), and its budget must count the jumped kernel, which then creeps nearer in an ordinary
    drift step (under the jump threshold) and takes the row."""
    monkeypatch.setattr("nws.drift.HISTORY", 2)
    g, pool, w = _drifting(6)
    cache = SearchCache(track_moves=True)
    idx = cache(w, pool)
    d1 = (w - pool[idx]).norm(dim=1)
    others = torch.cdist(w, pool).scatter_(1, idx[:, None], math.inf).amin(1)
    r = int((others / d1).argmax())  # the row deepest in its cell
    j = (int(idx[r]) + 1) % pool.shape[0]
    u = torch.nn.functional.normalize(torch.randn(pool.shape[1], generator=g), dim=0)

    def drift(pool, size):
        step = torch.nn.functional.normalize(torch.randn(pool.shape, generator=g), dim=1) * size
        return pool + step

    pool = drift(pool, 0.05 * d1[r])
    pool[j] = w[r] + 1.3 * d1[r] * u  # jumped, not nearer than the row's own kernel
    assert torch.equal(cache(w, pool), brute(w, pool)) and cache.indices[r] == idx[r]
    pool = drift(pool, 0.1 * d1[r])
    pool[j] = w[r] + 0.8 * d1[r] * u  # a move of 0.5·d1 < 8 × the median move of 0.1·d1: not a jump
    assert torch.equal(cache(w, pool), brute(w, pool)) and cache.indices[r] == j


def test_bench_pool_moves_quick_runs():
    from bench import search as bench_search

    table = bench_search.main(["--pool-moves", "--quick", "--threads", "1"])
    assert "full search" in table and "drift-aware cached search" in table


@pytest.mark.parametrize("d", [1, 2, 9, 49])
def test_random_walks_of_rows_and_pool_equal_the_full_search(d):
    """Scalar kernels, one- and two-kernel pools, rows on kernels, drifts of three sizes, jumps onto rows, new
    duplicates, an empty layer."""
    for n in (1, 2, 7, 64):
        g = torch.Generator().manual_seed(d * 100 + n)
        pool = torch.randn(n, d, generator=g)
        w = torch.randn(300, d, generator=g) * 0.8
        w[:50] = pool[torch.randint(0, n, (50,), generator=g)]
        cache, empty = SearchCache(track_moves=True), SearchCache(track_moves=True)
        for step in range(20):
            assert torch.equal(cache(w, pool), brute(w, pool)), (n, step)
            assert empty(w[:0], pool).numel() == 0
            pool = pool + [1e-4, 1e-3, 1e-2][step % 3] * torch.randn(pool.shape, generator=g)
            w = w + 1e-3 * torch.randn(w.shape, generator=g)
            if step % 5 == 4:
                pool[int(torch.randint(0, n, (1,), generator=g))] = w[int(torch.randint(0, 300, (1,), generator=g))]
            if step % 7 == 6 and n > 2:
                pool[1] = pool[0]


def test_checks_that_send_every_call_to_the_full_search_back_off(monkeypatch):
    """Rows and pool moving far every step: each call ends in the full search, so the checks are skipped for
    1, 2, 4, ... MAX_BACKOFF calls in a row (they cost a third of a search for nothing), and every answer stays the
    full search's."""
    from nws import cache as cache_module

    checks = []
    original = SearchCache._drift_keep
    monkeypatch.setattr(SearchCache, "_drift_keep", lambda self, x, p: checks.append(1) or original(self, x, p))
    g = torch.Generator().manual_seed(0)
    pool, w = torch.randn(16, 9, generator=g), torch.randn(400, 9, generator=g)
    cache = SearchCache(track_moves=True)
    for step in range(60):
        assert torch.equal(cache(w, pool), brute(w, pool)), step
        pool = pool + 0.5 * torch.randn(pool.shape, generator=g)
        w = w + 0.5 * torch.randn(w.shape, generator=g)
    # calls 2..60 move the pool; checks at 2, 4, 7, 12, 21, 38 (backoff 1, 2, 4, 8, 16, 16) and 55
    assert len(checks) == 7 and cache.backoff == cache_module.MAX_BACKOFF

