"""base.training without an engine or a loop: the MultiStepLR function and both stages agreeing on it, the non-finite
guard (naming the bad terms, counting, K in a row), BatchNorm statistics put back after a skipped or diagnostic
forward, and averaged over 2 gloo ranks exactly as the task loop's accelerate reduce did."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from base.training import (
    NonFiniteGuard,
    batchnorm_buffers,
    lr_factor,
    nonfinite_where,
    restore,
    scale_lr,
    set_lr,
    snapshot,
    sync_batchnorm_statistics,
)
from incremental.config import IncrementalConfig
from incremental.schedule import resolve
from pretrain.config import PretrainConfig
from pretrain.engine import lr_at


def test_lr_factor_is_multisteplr():
    assert [lr_factor(t, [2, 4], 0.1) for t in range(6)] == [1, 1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    assert lr_factor(10 ** 6, [], 0.1) == 1


@pytest.mark.parametrize("milestones", [[2, 4], [0.5, 0.75], [5]])
def test_both_stages_schedules_agree_for_the_same_milestones(milestones):
    """Pretraining's lr per epoch and the task loop's per step (and per epoch) are one function: for the same
    epochs, milestones (epochs or fractions of the run) and gamma they give the same lr, bit for bit."""
    epochs, per_epoch = 8, 9
    p = PretrainConfig(lr=0.05, epochs=epochs, milestones=milestones, gamma=0.2)
    inc = IncrementalConfig(lr=0.05, epochs=epochs, milestones=milestones, gamma=0.2, batch_size=32)
    sched = resolve(inc, 0, 32 * per_epoch)
    assert (sched.steps_per_epoch, sched.epochs) == (per_epoch, epochs)
    assert [inc.lr * sched.lr_factor(s) for s in range(sched.steps)] == \
        [lr_at(p, s // per_epoch) for s in range(sched.steps)]
    if all(isinstance(m, int) for m in milestones):  # the per-epoch factor exists for epoch milestones only
        assert [inc.lr * inc.lr_factor(e) for e in range(epochs)] == [lr_at(p, e) for e in range(epochs)]


def test_set_lr_and_scale_lr():
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [w[0]], "lr": 0.1}, {"params": [w[1]], "lr": 0.02}], lr=0.1)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    scale_lr(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1 * 0.1, 0.02 * 0.1]
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]


def test_bad_terms_names_every_non_finite_term():
    terms = {"ce": torch.tensor(2.3), "layer1.0.conv1": torch.tensor(float("inf")), "fc": torch.tensor(float("nan")),
             "layer2.0.conv1": torch.tensor(0.1)}
    assert NonFiniteGuard.bad_terms(terms) == ["layer1.0.conv1", "fc"]
    assert NonFiniteGuard.bad_terms({"ce": torch.tensor(1.0)}) == []


def test_skips_are_counted_and_k_in_a_row_stop_the_run():
    g = NonFiniteGuard(max_consecutive=3, skipped=10)  # a resumed run keeps counting from its checkpoint's total
    assert not g.skip() and not g.skip()
    g.ok()  # a finite step resets the run of skips, not the total
    assert not g.skip() and not g.skip()
    assert g.skip() and g.consecutive == 3
    assert g.skipped == 15


def test_batchnorm_statistics_are_put_back():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    bufs = batchnorm_buffers(net)
    before = snapshot(bufs)
    net.train()(torch.full((2, 3, 5, 5), float("nan")))
    assert torch.isnan(net[1].running_mean).all()
    restore(bufs, before)
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and int(net[1].num_batches_tracked) == 0


def test_nonfinite_where_finds_the_first_bad_output_and_keeps_batchnorm():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 6 * 6, 3))
    x = torch.randn(4, 1, 8, 8)
    assert nonfinite_where(net, x) == "every layer's output is finite (the loss term)"
    before = [b.clone() for b in net.buffers()]
    x[0, 0, 0, 0] = float("inf")
    assert nonfinite_where(net, x) == "first non-finite output at 0"
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers(), strict=True))
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")
    assert nonfinite_where(net, x) == "4.weight holds NaN/inf"


def _sync_rank(rank: int, world: int, init: str, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)
        net = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 1), torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3,
                                  track_running_stats=False))
        with torch.no_grad():
            net[1].running_mean.copy_(torch.randn(3) / 3)
            net[1].running_var.copy_(torch.rand(3) * 7 + 0.1)
        # what the task loop computed before issue 18: accelerate's reduce(t, "mean") = all_reduce(SUM), then / n
        want = []
        for buf in (net[1].running_mean, net[1].running_var):
            summed = buf.clone()
            dist.all_reduce(summed, dist.ReduceOp.SUM)
            summed /= world
            want.append(summed)
        sync_batchnorm_statistics(net, world)
        results[rank] = [torch.equal(net[1].running_mean, want[0]), torch.equal(net[1].running_var, want[1]),
                         net[1].running_mean.tolist(), net[1].running_var.tolist()]
    finally:
        dist.destroy_process_group()


def test_batchnorm_statistics_are_averaged_over_ranks_bit_for_bit(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_sync_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", results), nprocs=2)
        results = dict(results)
    assert all(results[r][0] and results[r][1] for r in (0, 1))
    assert results[0][2:] == results[1][2:]  # every rank holds the same network
    net = torch.nn.BatchNorm1d(3)
    sync_batchnorm_statistics(net, 1)  # one rank: nothing to do, no process group needed
    assert torch.equal(net.running_mean, torch.zeros(3))
