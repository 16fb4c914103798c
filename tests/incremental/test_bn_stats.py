"""BatchNorm statistics re-estimated for fixed weights (incremental.methods._bn_stats): the cumulative average over
the given batches, modes and momenta restored, frozen layers left alone; and the official PackNet's frozen BatchNorm,
which computes in training exactly what it computes in evaluation."""

import torch
from torch import nn

from incremental.methods._bn_stats import freeze_batchnorm, recalibrate_batchnorm


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))


def batches(n=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=gen) * 2 + 1, torch.zeros(8)) for _ in range(n)]


def test_statistics_are_the_average_over_the_batches_and_modes_are_restored():
    net = small_net().eval()
    net[1].momentum = 0.3
    data = batches()
    assert recalibrate_batchnorm(net, data, max_batches=4) == 4
    with torch.no_grad():
        feats = [net[0](x) for x, _ in data[:4]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5) and torch.allclose(net[1].running_var, var, rtol=1e-5)
    assert not any(m.training for m in net.modules())  # back in eval mode
    assert net[1].momentum == 0.3 and net[4].momentum == 0.1
    assert int(net[1].num_batches_tracked) == 4


def test_no_batches_and_frozen_layers_keep_their_statistics():
    net = small_net()
    recalibrate_batchnorm(net, batches(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_batchnorm(net, []) == 0  # an empty split changes nothing
    assert recalibrate_batchnorm(net, batches(), max_batches=0) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    freeze_batchnorm(net)
    assert recalibrate_batchnorm(net, batches(3, seed=2)) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_frozen_batchnorm_trains_as_it_evaluates():
    net = small_net()
    recalibrate_batchnorm(net, batches(3))
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    freeze_batchnorm(net)
    assert not any(p.requires_grad for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert all(p.requires_grad for p in net[0].parameters())
    x = batches(1, seed=3)[0][0]
    out = net.train()(x)
    assert torch.equal(out.detach(), net.eval()(x).detach())  # the pretrained statistics, not the batch's
    out.sum().backward()
    assert net[0].weight.grad is not None and net[1].weight.grad is None
    assert all(torch.equal(stats[k], net.state_dict()[k]) for k in stats)
