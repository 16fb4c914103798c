"""The codec's `near` mode (neighbour ranks in the pool, nws.near) and the storage levers (nws.levers): exact round
trips, smaller than delta when kernels move to nearby pool kernels, clear refusals of wrong pools or prev, and
levers that do what seed 004_ §5.7 / issue 9 say, on kernels of a network trained on digits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import nws
from nws import codec, levers
from nws.near import neighbour_order, rank_table


def random_pools(seed, sizes, d=9):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, d, generator=g) for name, n in sizes.items()}


def moved_task(seed, pools, length, rate, far=0.0):
    """prev at random; then a fraction `rate` of kernels moves to one of the 3 nearest pool kernels of its previous
    one (what a small step of the temporary kernel does), a fraction `far` anywhere."""
    rng = np.random.default_rng(seed)
    prev, cur = {}, {}
    for name, pool in pools.items():
        n = pool.shape[0]
        p = rng.integers(0, n, length)
        order = neighbour_order(pool.numpy())
        x = p.copy()
        near = rng.random(length) < rate
        x[near] = order[p[near], rng.integers(0, min(3, n - 1), int(near.sum()))]
        jump = rng.random(length) < far
        x[jump] = rng.integers(0, n, int(jump.sum()))
        prev[name], cur[name] = torch.from_numpy(p), torch.from_numpy(x)
    return prev, cur


def test_neighbour_order_and_rank_table_agree():
    pool = np.array([[0.0], [1.0], [3.0], [1.0], [-0.5]], np.float32)
    order = neighbour_order(pool)
    assert order.tolist()[0] == [4, 1, 3, 2]  # ties (1 and 3 at distance 1) go to the lower index
    assert order.tolist()[1] == [3, 0, 4, 2]  # the duplicate kernel first (distance 0), never the kernel itself
    rank = rank_table(order)
    assert all(rank[a, order[a, r]] == r for a in range(5) for r in range(4))
    assert (np.diag(rank) == -1).all()


@pytest.mark.parametrize("seed", range(4))
def test_near_round_trips_and_beats_delta(seed):
    sizes = {"conv1": 64, "layer1.conv": 512, "fc": 512, "empty": 512, "one": 1}
    pools = random_pools(seed, sizes)
    prev, cur = moved_task(seed, {k: v for k, v in pools.items() if k not in ("empty", "one")}, 20_000, 0.1)
    prev.update(empty=torch.zeros(0, dtype=torch.int64), one=torch.zeros(7, dtype=torch.int64))
    cur.update(empty=torch.zeros(0, dtype=torch.int64), one=torch.zeros(7, dtype=torch.int64))
    blob = codec.encode(cur, sizes, "near", prev=prev, pools=pools)
    assert codec.info(blob).mode == "near"
    back = codec.decode(blob, prev=prev, pools=pools)
    assert list(back) == list(cur) and all(torch.equal(back[k], cur[k]) for k in cur)
    delta = codec.encode(cur, sizes, "delta", prev=prev)
    # 3 equally likely ranks cost log2(3) bits instead of ~log2(n): a large saving on the changed kernels
    assert len(blob) < 0.75 * len(delta)
    assert codec.smallest(cur, sizes, prev=prev, pools=pools) == ("near", blob)
    assert codec.smallest(cur, sizes, prev=prev)[0] == "delta"  # without pools near is not tried


def test_near_with_far_jumps_and_all_changed_still_round_trips():
    sizes = {"a": 32, "b": 2}
    pools = random_pools(5, sizes, d=4)
    prev, cur = moved_task(5, pools, 3000, 1.0, far=0.5)
    cur["b"] = 1 - prev["b"]  # every kernel of a 2-kernel pool changes: rank 0 each time
    blob = codec.encode(cur, sizes, "near", prev=prev, pools=pools)
    back = codec.decode(blob, prev=prev, pools=pools)
    assert all(torch.equal(back[k], cur[k]) for k in cur)


def test_near_refuses_wrong_pools_or_prev():
    sizes = {"a": 64, "b": 64}
    pools = random_pools(6, sizes)
    prev, cur = moved_task(6, pools, 500, 0.2)
    blob = codec.encode(cur, sizes, "near", prev=prev, pools=pools)
    with pytest.raises(ValueError, match="needs the pools"):
        codec.decode(blob, prev=prev)
    other = {**pools, "b": pools["b"].clone()}
    other["b"][3, 0] += 1e-3
    with pytest.raises(ValueError, match="other pools"):
        codec.decode(blob, prev=prev, pools=other)
    with pytest.raises(ValueError, match="previous task"):
        codec.decode(blob, pools=pools)
    with pytest.raises(ValueError, match="'b': pool of 32 kernels, the indices need 64"):
        codec.encode(cur, sizes, "near", prev=prev, pools={**pools, "b": pools["b"][:32]})
    with pytest.raises(ValueError, match="needs pools"):
        codec.encode(cur, sizes, "near", prev=prev)
    with pytest.raises(codec.CorruptBlob, match="checksum"):
        codec.decode(blob[:-9] + bytes([blob[-9] ^ 1]) + blob[-8:], prev=prev, pools=pools)


@pytest.fixture(scope="module")
def trained():
    """A tiny NWS ResNet-18 searched on digits for a few steps: real temporary kernels and indices."""
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1) / 16
    y = torch.tensor(d.target)
    snet = nws.convert(nws.models.resnet18(10, stem="cifar", width=0.125), pool_size=32, pool_init="kmeans",
                       seed=0)
    prev = nws.export_indices(snet)
    opt = torch.optim.SGD(snet.parameters(), lr=0.05, momentum=0.9)
    for step in range(20):
        pick = torch.arange(64) + 64 * step
        loss = F.cross_entropy(snet(x[pick]), y[pick]) + 0.5 * nws.search_loss(snet)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return snet, prev, nws.export_indices(snet)


def test_keep_previous_keeps_more_as_the_margin_grows(trained):
    snet, prev, cur = trained
    kept = []
    for margin in (0.0, 0.2, 1.0, 1e9):
        n_same = 0
        for name, layer in nws.nws_layers(snet):
            out = levers.keep_previous(layer.flat_weight(), layer.pool, cur[name], prev[name], margin)
            assert ((out == cur[name]) | (out == prev[name])).all()
            n_same += int((out == prev[name]).sum())
        kept.append(n_same)
    total = sum(v.numel() for v in cur.values())
    assert kept[0] == sum(int((cur[k] == prev[k]).sum()) for k in cur) < total  # margin 0: only ties keep prev
    assert kept[0] < kept[2] <= kept[3] and kept[3] > 0.999 * total and kept == sorted(kept)


def test_sparsify_maps_the_rarely_selected_kernels_to_the_smallest_kernel(trained):
    snet, _, cur = trained
    name = max(cur, key=lambda k: nws.stats.layer_sparsity(cur[k]))  # the layer with the most rare kernels
    layer, x = dict(nws.nws_layers(snet))[name], cur[name]
    out = levers.sparsify(x, layer.pool)
    zero = levers.zero_kernel(layer.pool)
    assert float(layer.pool[zero].norm()) == float(layer.pool.norm(dim=1).min())
    h = torch.bincount(x, minlength=layer.pool.shape[0])
    rare = h[x] < math.sqrt(x.numel())
    assert rare.any() and torch.equal(out[rare], torch.full_like(out[rare], zero))
    assert torch.equal(out[~rare], x[~rare])
    # Eq. 5: the share of the layer that was replaced is its layer sparsity
    assert int((out != x).sum()) <= int(rare.sum()) == round(nws.stats.layer_sparsity(x) * x.numel())
    assert codec.empirical_entropy_bits({"a": out}) < codec.empirical_entropy_bits({"a": x})
