"""Pool distillation (Eq. 3/4): pools move toward their temporary kernels, dead kernels restart, no blow-up."""

import torch
from torch import nn

import nws
from tests import margin
from tests.conftest import SEED


def _layer_and_distiller(pool_size=16, restart_every=100, seed=0, decay=0.99):
    torch.manual_seed(seed)
    snet = nws.convert(nn.Sequential(nn.Conv2d(8, 8, 3, bias=False)), pool_size=pool_size, seed=seed)
    return snet, nws.PoolDistiller(snet, restart_every=restart_every, seed=seed, decay=decay)


def test_pool_kernels_move_toward_the_mean_of_their_assigned_kernels():
    snet, distiller = _layer_and_distiller()
    layer = snet[0]
    assert layer.mode == "distill"
    snet(torch.randn(2, 8, 5, 5))
    idx = layer.indices.clone()
    flat = layer.flat_weight().detach()
    before = layer.pool.clone()
    distiller.step()
    for j in idx.unique()[:5]:
        target = flat[idx == j].mean(0)
        assert torch.dist(layer.pool[j], target) < torch.dist(before[j], target)
    unused = [j for j in range(16) if j not in set(idx.tolist())]
    assert unused, "the test needs a pool kernel nobody chose"
    # the official EMA (cluster size starting at 0) multiplies unchosen kernels by ~1e5; ours leaves them in place
    for j in unused:
        assert torch.dist(layer.pool[j], before[j]) < 0.05 * before[j].norm()


def test_many_steps_converge_and_the_search_term_is_not_zero():
    # unused kernels die within ~50 steps
    snet, distiller = _layer_and_distiller(restart_every=10, decay=0.9, seed=SEED)
    layer = snet[0]
    opt = torch.optim.SGD(snet.parameters(), lr=0.0)  # W fixed: the pools alone must converge onto it
    first = None
    for _ in range(300):
        snet(torch.randn(1, 8, 5, 5))
        loss = nws.search_loss(snet)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        distiller.step()
    assert first > 0 and float(loss.detach()) < first  # the Eq. 2 term is live in distill mode and falls
    err = nws.pools.quantisation_error(layer.flat_weight(), layer.pool)
    start = nws.pools.quantisation_error(layer.flat_weight(), torch.randn(16, 9))
    margin.below("distilled / random quantisation error", err / start, 0.1)
    assert sum(distiller.restarts.values()) > 0  # N(0,1) pool kernels far from the kaiming-scale W were restarted
    used = layer.indices.unique().numel()
    margin.above("pool kernels in use of 16", used, 11.5)  # restarts bring dead kernels back into use


def test_state_dict_round_trip_resumes_identically():
    snet_a, dist_a = _layer_and_distiller(seed=3, restart_every=5)
    x = [torch.randn(1, 8, 5, 5) for _ in range(12)]
    for xi in x[:6]:
        snet_a(xi)
        dist_a.step()
    state, model_state = dist_a.state_dict(), {k: v.clone() for k, v in snet_a.state_dict().items()}
    for xi in x[6:]:
        snet_a(xi)
        dist_a.step()

    snet_b, dist_b = _layer_and_distiller(seed=3, restart_every=5)
    snet_b.load_state_dict(model_state)
    dist_b.load_state_dict(state)
    for xi in x[6:]:
        snet_b(xi)
        dist_b.step()
    assert torch.equal(snet_a[0].pool, snet_b[0].pool)
    assert dist_a.restarts == dist_b.restarts


def test_restart_period_follows_the_run_length():
    """Ten restarts a run, never further apart than the EMA's memory (100 steps at decay 0.99): the issue's 30-step
    run restarts every 3 steps (its config's 50 never fired), the demo's 264 every 26, ImageNet's 100k every 100."""
    from nws.distill import restart_period

    assert [restart_period(n) for n in (4, 30, 264, 1404, 100_000)] == [1, 3, 26, 100, 100]
    assert restart_period(100_000, decay=0.9) == 10


def test_dead_share_is_counted_before_the_restart_hides_it():
    """A pool far from its kernels: after one step all but the chosen pool kernels are dead (EMA usage 0.99 < 1),
    and the share is reported even though the same step restarted them; it survives a state_dict round trip."""
    snet, distiller = _layer_and_distiller(restart_every=1)
    distiller.dead_usage = 1.0
    snet(torch.randn(1, 8, 5, 5))
    used = snet[0].indices.unique().numel()
    distiller.step()
    assert sum(distiller.restarts.values()) == 16 - used
    assert distiller.dead_share()["0"] == (16 - used) / 16
    _, other = _layer_and_distiller(restart_every=1)
    other.load_state_dict(distiller.state_dict())
    assert other.dead_share() == distiller.dead_share()
