"""NWS layers: they mirror nn.Conv2d/nn.Linear, use the searched kernels, and pass the right gradient (Eq. 1-2)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nws
from nws.layers import NWSConv2d, NWSLinear


def _brute_nearest(flat, pool):
    return torch.cdist(flat.double(), pool.double(), compute_mode="donot_use_mm_for_euclid_dist").argmin(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=True),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=2),
        dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
        dict(in_channels=4, out_channels=5, kernel_size=1, stride=2),
        dict(in_channels=3, out_channels=4, kernel_size=(3, 5), padding=(1, 2)),
    ],
)
def test_conv_mirrors_nn_conv2d_on_searched_kernels(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    snet = nws.convert(nn.Sequential(conv), pool_size=16, pool_init="sample", seed=0)
    layer = snet[0]
    assert isinstance(layer, NWSConv2d) and layer.weight.shape == conv.weight.shape
    assert (layer.bias is not None) == (conv.bias is not None)
    x = torch.randn(2, kwargs["in_channels"], 9, 9)
    out = snet(x)
    kernels = layer.pool[_brute_nearest(layer.flat_weight().detach(), layer.pool)].reshape(conv.weight.shape)
    expected = F.conv2d(x, kernels, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(out, expected)
    assert torch.equal(layer.indices, _brute_nearest(layer.flat_weight().detach(), layer.pool))


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_linear_groups_consecutive_scalars(group_size):
    torch.manual_seed(1)
    lin = nn.Linear(8, 3, bias=True)
    snet = nws.convert(nn.Sequential(lin), pool_size=10, linear_group_size=group_size, pool_init="sample", seed=1)
    layer = snet[0]
    assert isinstance(layer, NWSLinear) and layer.group_dim == group_size
    assert layer.num_groups == 8 * 3 // group_size
    x = torch.randn(5, 8)
    flat = lin.weight.detach().reshape(-1, group_size)  # rows of g consecutive input weights
    kernels = layer.pool[_brute_nearest(flat, layer.pool)].reshape(3, 8)
    torch.testing.assert_close(snet(x), F.linear(x, kernels, lin.bias))


def test_gradient_is_task_gradient_wrt_searched_kernels_plus_beta_similarity():
    """dL/dW = dL_task/dK + beta * d mean((sg[K]-W)^2)/dW  (straight-through estimator + Eq. 2)."""
    torch.manual_seed(2)
    beta = 0.7
    layer = nws.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)), pool_size=8, seed=2)[0].double()
    x, target = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    task = lambda out: ((out - target) ** 2).sum()  # noqa: E731
    loss = task(layer(x)) + beta * layer.diff
    loss.backward()

    K = layer.searched_weight().detach().clone().requires_grad_(True)
    task(F.conv2d(x, K, None, 1, 1)).backward()
    W = layer.weight.detach()
    sim_grad = 2 * (W - K.detach()) / W.numel()
    torch.testing.assert_close(layer.weight.grad, K.grad + beta * sim_grad)

    # the similarity gradient itself, by central finite differences on a few coordinates
    def sim(w):
        return ((K.detach() - w) ** 2).mean()
    for coord in [(0, 0, 0, 0), (3, 2, 2, 1), (1, 1, 0, 2)]:
        e = torch.zeros_like(W)
        e[coord] = 1e-6
        fd = (sim(W + e) - sim(W - e)) / 2e-6
        assert abs(float(fd) - float(sim_grad[coord])) < 1e-8


def test_forward_value_is_exactly_the_searched_kernels():
    torch.manual_seed(3)
    layer = nws.convert(nn.Sequential(nn.Conv2d(2, 3, 3)), pool_size=5, seed=3)[0]
    w = layer.effective_weight()
    assert torch.equal(w.detach(), layer.searched_weight())


def test_search_loss_sums_layer_terms_and_refuses_silent_zero():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    snet = nws.convert(net, pool_size=8, seed=4)
    with pytest.raises(RuntimeError, match="no NWS similarity terms"):
        nws.search_loss(snet)
    snet(torch.randn(2, 3, 8, 8))
    terms = [layer.diff for _, layer in nws.nws_layers(snet)]
    assert len(terms) == 3 and all(t > 0 for t in terms)
    torch.testing.assert_close(nws.search_loss(snet), sum(terms))


def test_frozen_mode_is_plain_and_has_no_search_term():
    torch.manual_seed(5)
    snet = nws.convert(nn.Sequential(nn.Conv2d(3, 4, 3)), pool_size=8, seed=5)
    x = torch.randn(2, 3, 7, 7)
    searched = snet(x)
    nws.set_mode(snet, "frozen")
    out = snet(x)
    assert snet[0].diff is None
    torch.testing.assert_close(out, searched)
    with pytest.raises(RuntimeError):
        nws.search_loss(snet)
    with pytest.raises(ValueError, match="valid modes"):
        nws.set_mode(snet, "train")


def test_search_is_fp32_under_bf16_autocast():
    torch.manual_seed(6)
    snet = nws.convert(nn.Sequential(nn.Conv2d(8, 8, 3)), pool_size=64, pool_init="sample", seed=6)
    layer = snet[0]
    expected = _brute_nearest(layer.flat_weight().detach(), layer.pool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = snet(torch.randn(1, 8, 6, 6))
    assert out.dtype == torch.bfloat16
    assert torch.equal(layer.indices, expected)


def test_kernels_stay_exact_across_training_steps_with_the_search_cache():
    """Each forward uses pool[nearest(W)] for the current W, also when most kernels keep their index (the cached
    search and the reused K) and when the pool is replaced from outside."""
    torch.manual_seed(7)
    snet = nws.convert(nn.Sequential(nn.Conv2d(4, 8, 3)), pool_size=32, pool_init="sample", seed=7)
    layer = snet[0]
    opt = torch.optim.SGD(snet.parameters(), lr=0.5)
    for step in range(12):
        x = torch.randn(2, 4, 6, 6)
        w = layer.effective_weight()
        expected = layer.pool[_brute_nearest(layer.flat_weight().detach(), layer.pool)].reshape(w.shape)
        assert torch.equal(w.detach(), expected), step
        loss = snet(x).square().mean() + nws.search_loss(snet)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 6:
            nws.load_pools(snet, {"0": torch.randn(32, 9) * 0.1})
