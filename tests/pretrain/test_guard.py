"""pretrain.guard without an engine: naming the non-finite terms, counting, stopping after K in a row."""

import pytest
import torch

from pretrain.guard import NonFiniteGuard, NonFiniteLoss, batchnorm_buffers, restore, snapshot


def test_bad_terms_names_every_non_finite_term():
    terms = {"ce": torch.tensor(2.3), "layer1.0.conv1": torch.tensor(float("inf")), "fc": torch.tensor(float("nan")),
             "layer2.0.conv1": torch.tensor(0.1)}
    assert NonFiniteGuard.bad_terms(terms) == ["layer1.0.conv1", "fc"]
    assert NonFiniteGuard.bad_terms({"ce": torch.tensor(1.0)}) == []


def test_skips_are_counted_and_k_in_a_row_stop_the_run():
    g = NonFiniteGuard(max_consecutive=3)
    assert "ce" in g.skip(["ce"], step=4)
    g.skip(["ce"], step=4)
    g.ok()  # a finite step resets the run of skips, not the total
    g.skip(["layer3.1.conv2"], step=5)
    g.skip(["layer3.1.conv2"], step=5)
    with pytest.raises(NonFiniteLoss, match=r"3 consecutive.*layer3\.1\.conv2"):
        g.skip(["layer3.1.conv2"], step=5)
    assert g.skipped == 5


def test_batchnorm_statistics_are_put_back():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    bufs = batchnorm_buffers(net)
    before = snapshot(bufs)
    net.train()(torch.full((2, 3, 5, 5), float("nan")))
    assert torch.isnan(net[1].running_mean).all()
    restore(bufs, before)
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and int(net[1].num_batches_tracked) == 0
