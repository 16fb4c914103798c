"""convert / export_indices / load_indices / materialize / pools on real networks (Algorithm 1's E and D)."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import nws
from tests import margin
from tests.conftest import SEED

ROOT = Path(__file__).resolve().parents[2]


def _narrow_resnet(**kw):
    torch.manual_seed(0)
    return nws.models.resnet18(num_classes=5, stem="nws", width=0.125, **kw)


def test_every_conv_and_linear_becomes_an_nws_layer():
    net = _narrow_resnet()
    snet = nws.convert(net, pool_size=32, seed=0)
    plain_layers = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [n for n, _ in nws.nws_layers(snet)] == plain_layers
    assert not any(isinstance(m, nn.Conv2d | nn.Linear) for m in snet.modules())
    # the original network is untouched, the temporary kernels start from its weights
    for name, layer in nws.nws_layers(snet):
        torch.testing.assert_close(layer.weight, net.get_submodule(name).weight)


def test_official_resnet18_kernel_counts_from_the_converted_network():
    """notes/algorithms.md §1.2: 1,395,392 kernels (stem 192, 3×3 1,220,608, shortcuts 172,032, head 2,560)."""
    snet = nws.convert(nws.models.resnet18(num_classes=5, stem="nws", width=1.0), pool_size=512, seed=0)
    layers = dict(nws.nws_layers(snet))
    assert len(layers) == 21
    by_kind = {"stem": 0, "3x3": 0, "shortcut": 0, "head": 0}
    for name, layer in layers.items():
        if name == "conv1":
            kind = "stem"
        elif name == "fc":
            kind = "head"
        elif "shortcut" in name:
            kind = "shortcut"
        else:
            kind = "3x3"
            assert layer.group_dim == 9
        by_kind[kind] += layer.num_groups
    assert by_kind == {"stem": 192, "3x3": 1_220_608, "shortcut": 172_032, "head": 2_560}
    total = sum(by_kind.values())
    assert total == 1_395_392
    bits = math.ceil(math.log2(512))
    assert bits == 9
    packed_mib = total * bits / 8 / 2**20
    assert 1.49 < packed_mib < 1.5  # ≈1.5 MiB per task before BatchNorm, under the paper's 1.6 MB
    blob = nws.codec.encode({n: torch.zeros(m.num_groups, dtype=torch.long) for n, m in layers.items()},
                            nws.pool_sizes(snet), mode="packed")
    assert len(blob) - math.ceil(total * 9 / 8) < 1024  # the header is small


def test_export_load_round_trip_and_materialize_matches_in_eval():
    net = _narrow_resnet()
    snet = nws.convert(net, pool_size=64, pool_init="kmeans", seed=1)
    snet.eval()
    x = torch.randn(4, 3, 32, 32)
    idx = nws.export_indices(snet)
    assert all(v.dtype == torch.int64 for v in idx.values())
    out = snet(x)

    plain = nws.materialize(snet)
    assert not any(isinstance(m, nws.NWSLayer) for m in plain.modules())
    plain.eval()
    torch.testing.assert_close(plain(x), out)

    other = nws.convert(net, pool_size=64, pool_init="kmeans", seed=1)  # same pools, fresh temporary kernels
    with torch.no_grad():
        for _, layer in nws.nws_layers(other):
            layer.weight.normal_()
    nws.load_indices(other, idx)
    other.eval()
    torch.testing.assert_close(other(x), out)
    for name, layer in nws.nws_layers(other):  # W_{t+1} = D(C_t; M) (Algorithm 1, line 3)
        torch.testing.assert_close(layer.weight, layer.searched_weight())
        assert torch.equal(layer.indices.cpu(), idx[name])
    assert all(torch.equal(a, b) for a, b in zip(nws.export_indices(other).values(), idx.values(), strict=True))


def test_load_indices_rejects_mismatches():
    snet = nws.convert(_narrow_resnet(), pool_size=16, seed=0)
    idx = nws.export_indices(snet)
    with pytest.raises(ValueError, match="missing"):
        nws.load_indices(snet, {k: v for k, v in idx.items() if k != "fc"})
    bad = dict(idx, fc=idx["fc"][:-1])
    with pytest.raises(ValueError, match="'fc'.*indices given"):
        nws.load_indices(snet, bad)
    bad = dict(idx, conv1=idx["conv1"] + 16)
    with pytest.raises(ValueError, match="'conv1'.*outside the pool"):
        nws.load_indices(snet, bad)


def test_load_pools_names_the_mismatched_layer():
    snet = nws.convert(_narrow_resnet(), pool_size=16, seed=0)
    pools = nws.export_pools(snet)
    other = nws.convert(_narrow_resnet(), pool_size=32, seed=0)
    with pytest.raises(ValueError, match="layer 'conv1'.*shape"):
        nws.load_pools(other, pools)
    same = nws.convert(_narrow_resnet(), pool_size=16, seed=5)
    nws.load_pools(same, pools)
    assert all(torch.equal(a, b) for a, b in zip(nws.export_pools(same).values(), pools.values(), strict=True))


def test_load_pools_names_the_file_and_refuses_non_finite_pools():
    """Issue 17: pools holding NaN loaded without complaint, and the mismatch errors named no file."""
    snet = nws.convert(_narrow_resnet(), pool_size=16, seed=0)
    pools = nws.export_pools(snet)
    broken = {**pools, "layer1.0.conv1": pools["layer1.0.conv1"].clone()}
    broken["layer1.0.conv1"][3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^runs/x/pools.safetensors: layer 'layer1.0.conv1': .* 1 non-finite"):
        nws.load_pools(snet, broken, "runs/x/pools.safetensors")
    partial = {k: v for k, v in pools.items() if k != "fc"}
    with pytest.raises(ValueError, match=r"^runs/x/pools.safetensors: the pools do not match .* missing \['fc'\]"):
        nws.load_pools(snet, partial, "runs/x/pools.safetensors")


def test_kmeans_pool_quantises_trained_like_kernels_better_than_random():
    """Trained-like kernels: smooth oriented edge/blob filters with varied gain plus noise, at kaiming scale."""
    gen = torch.Generator().manual_seed(SEED)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3), indexing="ij")
    angles = torch.rand(4000, generator=gen) * math.pi
    edges = torch.cos(angles)[:, None, None] * xx + torch.sin(angles)[:, None, None] * yy
    blobs = torch.exp(-(xx**2 + yy**2))[None].expand(4000, 3, 3)
    mix = torch.rand(4000, 1, 1, generator=gen)
    kernels = (mix * edges + (1 - mix) * blobs) * torch.randn(4000, 1, 1, generator=gen) * 0.1
    kernels = (kernels + 0.005 * torch.randn(4000, 3, 3, generator=gen)).reshape(4000, 9)
    random_pool = torch.randn(64, 9, generator=gen) * kernels.std()  # random at the kernels' own scale
    kmeans_pool = nws.pools.init_pool(kernels, 64, "kmeans", generator=gen)
    err_random = nws.pools.quantisation_error(kernels, random_pool)
    err_kmeans = nws.pools.quantisation_error(kernels, kmeans_pool)
    margin.below("kmeans / random error", err_kmeans / err_random, 0.5)
    assert err_kmeans < nws.pools.quantisation_error(kernels, nws.pools.init_pool(kernels, 64, "sample", gen))


def test_stats_kur_and_layer_sparsity():
    idx = torch.tensor([0] * 90 + [1] * 6 + [2, 3, 4, 5])  # d = 100, sqrt(d) = 10
    assert nws.stats.kernel_utilisation(idx, 512) == 6 / 512
    assert nws.stats.layer_sparsity(idx) == pytest.approx(10 / 100)  # kernel 1 (6×) and four singletons
    rates = nws.stats.selection_rates(idx, 8)
    assert rates.shape == (8,) and float(rates.sum()) == pytest.approx(1.0) and float(rates[0]) == 0.9


def test_readme_example_runs():
    """The Python API example of the README is executed as written."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    api = [b for b in blocks if "nws.convert" in b and "nws.codec" in b]
    assert api, "README has no Python API example"
    exec(compile(api[0], "README.md", "exec"), {})
