"""Issue 14: a stored SupSup / DST task carries the BatchNorm statistics of its stored network. The running averages
of training followed networks that kept changing (SupSup's masks every step, from fresh statistics; DST's pruned
backbone and its prune/regrow), and after a few steps they describe none of them: the stored task then sat at exactly
chance while its training loss fell. Checked here on the rebuilt model, independently of how the statistics were
made: in eval mode, the input of every BatchNorm layer, over the task's training split, has the mean and variance
that the layer's stored statistics say. End to end, a short schedule (18 steps a task, where Adam also needs the lr
of incremental.methods._adam_reach) stores tasks far above chance."""

import pytest
import torch
from torch import nn

from incremental.loop import run
from incremental.methods._bn_recal_supsup_dst import MAX_BATCHES, recalibrate, recalibration_batches
from loaders import make_loader
from tests import margin
from tests.incremental.fixtures import make_config
from tests.incremental.test_dst import dst, train_steps
from tests.incremental.test_methods import train_a_little
from tests.incremental.test_supsup import supsup


def bn_input_moments(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BN layer: (per-channel mean, per-channel variance) of its input} for one eval-mode forward of `x`."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            def hook(mod, args, name=name):
                a = args[0].detach().transpose(0, 1).flatten(1)
                seen[name] = (a.mean(1), a.var(1))
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def worst_mismatch(model: nn.Module, x: torch.Tensor) -> tuple[str, float]:
    """(BN layer, mismatch) of the layer whose stored statistics are furthest from those of its eval-mode input over
    `x`: |log(input variance / running variance)| (channel means) + the mean offset |input mean - running mean| in
    units of the input's std (channel average). 0 when they agree exactly."""
    moments, worst = bn_input_moments(model, x), ("", 0.0)
    for name, m in model.named_modules():
        if name in moments:
            mean, var = moments[name]
            ratio = float(var.mean() / m.running_var.mean())
            shift = float(((mean - m.running_mean).abs() / var.sqrt().clamp_min(1e-6)).mean())
            off = abs(torch.log(torch.tensor(ratio)).item()) + shift
            worst = max(worst, (name, off), key=lambda w: w[1])
    return worst


def training_split(m, t):
    x, _ = next(iter(make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "train", "memory", batch_size=100000)))
    return x


def test_recalibrate_gives_the_split_statistics_and_restores_the_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    net.eval()
    data = [torch.randn(16, 3, 6, 6) * 3 + 1 for _ in range(5)]
    before = net[1].running_mean.clone()
    assert recalibrate(net, ((x, None) for x in data)) == 80
    assert not net.training and net[1].momentum == 0.1  # modes and momenta come back
    assert not torch.equal(net[1].running_mean, before)
    with torch.no_grad():
        h = torch.cat([net[0](x) for x in data])
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    # the cumulative average of the batches' unbiased variances (what training-mode running statistics average)
    per_batch = torch.stack([net[0](x).detach().transpose(0, 1).flatten(1).var(1) for x in data])
    torch.testing.assert_close(net[1].running_var, per_batch.mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate(net, iter([]))


def test_recalibration_batches_cover_the_split_without_augmentation(digits, pretrained, tmp_path):
    m = supsup(digits, pretrained, tmp_path)
    batches = list(recalibration_batches(m.ctx, 0))
    n = sum(len(y) for _, y in batches)
    assert n == min(len(training_split(m, 0)), MAX_BATCHES * m.inc.batch_size)
    assert {int(c) for _, y in batches[:2] for c in y} == {0, 1}  # shuffled: not one class first
    again = list(recalibration_batches(m.ctx, 0))  # fixed order and no augmentation: a resumed task stores the same
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


@pytest.mark.parametrize("weights", ["signed_constant", "backbone"])
def test_stored_supsup_statistics_are_those_of_the_stored_masks(digits, pretrained, tmp_path, weights):
    m = supsup(digits, pretrained, tmp_path, weights=weights)
    model = train_a_little(m, m.setup_task(0), 0, steps=4)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    name, off = worst_mismatch(m.rebuild(0, m.ctx.task_dir(0)), training_split(m, 0))
    # measured 0.05-0.15 over test seeds 0-3 with recomputed statistics; the running averages of 4 steps: 364 and more
    margin.below(f"supsup {weights} BN mismatch ({name})", off, 0.4)


def test_stored_dst_statistics_are_those_of_the_stored_network(digits, pretrained, tmp_path):
    m = dst(digits, pretrained, tmp_path, density=0.2, update_frequency=3)
    model = train_steps(m, m.setup_task(0), 0, 6)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    name, off = worst_mismatch(m.rebuild(0, m.ctx.task_dir(0)), training_split(m, 0))
    margin.below(f"dst BN mismatch ({name})", off, 0.4)  # measured 0.07-0.13; running averages: 1e5


@pytest.mark.parametrize("method,options", [("supsup", {}), ("dst", {"density": 0.2})])
def test_a_short_schedule_stores_tasks_above_chance(digits, pretrained, tmp_path, method, options):
    """18 steps a task with each method's own defaults. Before issue 14 the stored tasks sat at chance (DST 0.50,
    SupSup 0.67 here; 0.50 on the demo) with the running averages of training as their statistics and Adam at the
    official 1e-3, which moves a parameter 0.01 in 18 steps; measured now 0.98-0.99 (SupSup), 0.96-1.0 (DST) over
    test seeds 0-3."""
    cfg = make_config(num_tasks=2, epochs=2, milestones=[1], max_steps_per_epoch=9, options={method: options})
    doc = run(cfg, digits, pretrained, tmp_path / "out", methods=[method])[method]
    margin.above(f"{method} final avg acc, 18 steps a task", doc["final_avg_acc"], 0.85)
