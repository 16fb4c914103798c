"""DST for continual learning (seed 003_) as a plug-in: the mask density never moves through prune/regrow, weights of
earlier tasks are read but never written, every regrowth rule does what it says, masks are stored at 1 bit per
weight, and a rebuilt task predicts exactly as the trained one."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from base.config import ConfigError
from incremental.loop import run
from incremental.masks import load_masks, packed_bytes, save_masks
from incremental.methods._dst_sparse import death_rate, erk_densities, init_masks, prune_magnitude, regrow
from incremental.methods._masked_net import masked_params
from incremental.methods.dst import MASK, OWNED, STATE
from loaders import make_loader
from nws.io import load_metadata, load_tensors
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import method_for, sample_batch


def payload_bytes(path):
    """Bytes after the safetensors header (8-byte length + JSON): what the tensors of the file hold."""
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def same_content(a, b):
    """Same tensors, bit for bit, and the same metadata (safetensors writes metadata keys in no fixed order, so
    equal files need not be equal bytes)."""
    x, y = load_tensors(a), load_tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) and load_metadata(a) == load_metadata(b)


def dst(digits, pretrained, tmp_path, **options):
    return method_for("dst", digits, pretrained, tmp_path, options={"dst": options})


def train_steps(m, model, t, steps, check=None):
    """`steps` optimizer steps the way incremental.train takes them: the method's optimizer, before_step, step,
    zero_grad, after_step; `check(model, step)` runs after each."""
    opt = m.make_optimizer(m.param_groups(model))
    model.train()
    loader = make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "train", "memory", batch_size=32, train=True)
    step = 0
    while step < steps:
        for x, y in loader:
            F.cross_entropy(model(x), y).backward()
            m.before_step(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            m.after_step(model, step)
            if check is not None:
                check(model, step)
            if step == steps:
                break
    return model.eval()


def counts(masks):
    return {n: int(v.sum()) for n, v in masks.items()}


def test_erk_densities_meet_the_target_and_favour_small_layers():
    shapes = {"stem": (16, 3, 3, 3), "mid": (64, 64, 3, 3), "big": (128, 128, 3, 3), "proj": (128, 64, 1, 1)}
    d = erk_densities(shapes, 0.1)
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(0.1 * total)
    assert d["stem"] > d["mid"] > d["big"] and all(0 < v <= 1 for v in d.values())
    dense = erk_densities(shapes, 0.6)  # the stem's ERK density would pass 1: it becomes dense, the rest re-solved
    assert dense["stem"] == 1.0 and sum(dense[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(
        0.6 * total)
    masks = init_masks(shapes, 0.1, "ERK", torch.Generator().manual_seed(0))
    assert counts(masks) == {n: round(d[n] * math.prod(s)) for n, s in shapes.items()}
    uniform = init_masks(shapes, 0.25, "uniform", torch.Generator().manual_seed(0))
    assert counts(uniform) == {n: round(0.25 * math.prod(s)) for n, s in shapes.items()}


def test_death_rate_is_cosine_decayed():
    assert death_rate(0, 100) == pytest.approx(0.5)
    assert death_rate(50, 100) == pytest.approx((0.5 + 0.005) / 2)
    assert death_rate(100, 100) == pytest.approx(0.005) and death_rate(150, 100) == pytest.approx(0.005)


def test_prune_and_each_regrowth_rule():
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.5, -0.1, 0.0, 2.0, -0.3, 0.05, 0.0, 0.0])
    mask = torch.tensor([True, True, False, True, True, True, False, False])
    pruned, k = prune_magnitude(w, mask, 0.5)  # ceil(0.5 * 5) = 3 smallest |w| among the active: 0.05, -0.1, -0.3
    assert k == 3 and pruned.tolist() == [True, False, False, True, False, False, False, False]
    score = torch.tensor([9.0, 1.0, -5.0, 9.0, 3.0, 0.5, 4.0, 0.1])
    grown = regrow(pruned, 3, "gradient", gen, score=score)  # largest |score| among the inactive: 2, 6, 4
    assert grown.tolist() == [True, False, True, True, True, False, True, False]
    grown = regrow(pruned, 3, "momentum", gen, score=-score)
    assert grown.tolist() == [True, False, True, True, True, False, True, False]
    fired = torch.tensor([True, True, False, True, True, True, True, False])  # never active: 2 and 7
    for _ in range(5):
        grown = regrow(pruned, 3, "unfired", gen, fired=fired)
        assert grown[2] and grown[7] and int(grown.sum()) == 5
    picks = set()
    for _ in range(20):
        grown = regrow(pruned, 3, "random", gen)
        assert int(grown.sum()) == 5 and bool(grown[pruned].all())
        picks.add(tuple(grown.tolist()))
    assert len(picks) > 1  # random, not a fixed choice
    with pytest.raises(ValueError, match="only 6 are inactive"):
        regrow(pruned, 7, "random", gen)


@pytest.mark.parametrize("init,growth", [("uniform", "random"), ("ERK", "unfired"), ("uniform", "momentum"),
                                         ("ERK", "gradient")])
def test_density_is_kept_after_every_prune_and_regrow(digits, pretrained, tmp_path, init, growth):
    m = dst(digits, pretrained, tmp_path, density=0.3, init=init, growth=growth, update_frequency=2)
    model = m.setup_task(0)
    start = {n: v.clone() for n, v in m.masks.items()}
    want = counts(start)
    numel = sum(v.numel() for v in start.values())
    assert sum(want.values()) / numel == pytest.approx(0.3, abs=0.01)
    seen = []

    def check(model, step):
        assert counts(m.masks) == want
        for n, p in masked_params(model).items():
            assert not bool(p.detach()[~m.masks[n]].any())  # nothing outside the mask
            assert bool((m.fired[n] | ~m.masks[n]).all())  # every active position counts as fired
        seen.append(sum(int((m.masks[n] != start[n]).sum()) for n in start))

    train_steps(m, model, 0, 6, check)
    assert seen[0] == 0 and seen[1] > 0  # step 2 is the first update: the topology moved, the counts did not


def test_earlier_tasks_weights_are_read_but_never_written(digits, pretrained, tmp_path):
    m = dst(digits, pretrained, tmp_path, density=0.5, growth="momentum", update_frequency=2)
    model0 = train_steps(m, m.setup_task(0), 0, 4)
    m.write_artifact(model0, 0, m.ctx.task_dir(0))
    files0 = {p.name: p.read_bytes() for p in m.ctx.task_dir(0).iterdir()}
    x = sample_batch(m, 0)
    with torch.no_grad():
        before = m.rebuild(0, m.ctx.task_dir(0)).eval()(x)
    stored0 = {n: p.detach().clone() for n, p in masked_params(model0).items()}
    mask0 = {n: v.clone() for n, v in m.masks.items()}

    model1 = m.setup_task(1)
    assert all(torch.equal(m.used[n], mask0[n]) for n in mask0)
    reused = []

    def check(model, step):
        for n, p in masked_params(model).items():
            both = m.masks[n] & mask0[n]
            assert torch.equal(p.detach()[both], stored0[n][both])  # bit-identical wherever task 1 reads them
        reused.append(sum(int((m.masks[n] & mask0[n]).sum()) for n in mask0))

    train_steps(m, model1, 1, 6, check)
    assert min(reused) > 0  # task 1 does use task 0's weights
    m.write_artifact(model1, 1, m.ctx.task_dir(1))
    assert {p.name: p.read_bytes() for p in m.ctx.task_dir(0).iterdir()} == files0
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x), before)
    owned1 = m.chain(1)[0]
    for n in mask0:  # the dense store: task 0's values where it was first, task 1's only where task 0 was not
        assert torch.equal(owned1[n][mask0[n]], stored0[n][mask0[n]])


def test_artifact_round_trip_and_stored_bytes(digits, pretrained, tmp_path):
    m = dst(digits, pretrained, tmp_path, density=0.2, init="ERK", growth="gradient", update_frequency=3)
    for t in range(2):
        model = train_steps(m, m.setup_task(t), t, 4)
        folder = m.ctx.task_dir(t)
        m.write_artifact(model, t, folder)
        rebuilt = m.rebuild(t, folder).eval()
        x = sample_batch(m, t)
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt(x))
        assert type(rebuilt.conv1) is torch.nn.Conv2d and rebuilt.fc.out_features == 2
        stored = load_masks(folder / MASK)
        assert all(torch.equal(stored[n], m.masks[n]) for n in m.masks)
        assert payload_bytes(folder / MASK) == packed_bytes(m.masks) == sum(
            math.ceil(v.numel() / 8) for v in m.masks.values())
        owned = sum(int((m.masks[n] & ~m.used[n]).sum()) for n in m.masks)
        assert payload_bytes(folder / OWNED) == 4 * owned
        state = json.loads((folder / STATE).read_bytes()[8:8 + int.from_bytes((folder / STATE).read_bytes()[:8],
                                                                                 "little")])
        assert not any(k in state for k in masked_params(model))  # masked weights only in mask + owned files
        report = m.task_report(t, folder)
        assert report["active"] == sum(counts(m.masks).values()) and report["owned"] == owned
        assert report["mask_payload_bytes"] == packed_bytes(m.masks)


def test_masks_and_checkpoint_state_round_trip(digits, pretrained, tmp_path):
    m = dst(digits, pretrained, tmp_path, density=0.3, growth="unfired", update_frequency=2)
    model = train_steps(m, m.setup_task(0), 0, 4)
    save_masks(tmp_path / "m.safetensors", m.masks)
    back = load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(back[n], m.masks[n]) and back[n].shape == m.masks[n].shape for n in m.masks)
    state = m.checkpoint_state()
    masks, fired = {n: v.clone() for n, v in m.masks.items()}, {n: v.clone() for n, v in m.fired.items()}
    other = method_for("dst", m.ctx.data_dir, m.ctx.pretrain_dir, tmp_path / "b",
                       options={"dst": {"density": 0.3, "growth": "unfired", "update_frequency": 2}})
    other.setup_task(0)
    other.load_checkpoint_state(state)
    assert other.step == 4 and all(torch.equal(other.masks[n], masks[n]) for n in masks)
    assert all(torch.equal(other.fired[n], fired[n]) for n in fired) and model is not None


def test_options_are_validated(digits, pretrained, tmp_path):
    for bad in ({"density": 0}, {"growth": "random_unfired"}, {"init": "GMP"}, {"update_frequency": 0},
                {"sparsity": 0.8}):
        with pytest.raises(ConfigError, match="incremental.options.dst"):
            dst(digits, pretrained, tmp_path / str(len(list(tmp_path.iterdir()))), **bad)


def test_dst_end_to_end(digits, pretrained, tmp_path):
    # the loop's SGD recipe (Adam at 1e-3 needs more than these 18 steps on the tiny backbone); momentum regrowth
    # then reads the SGD momentum buffer
    cfg = make_config(num_tasks=2, epochs=2, max_steps_per_epoch=9, options={"dst": {
        "density": 0.3, "update_frequency": 4, "growth": "momentum", "optimizer": "sgd", "lr": 0.05}})
    doc = run(cfg, digits, pretrained, tmp_path / "out", methods=["dst"])["dst"]
    assert json.loads((tmp_path / "out" / "dst" / "metrics.json").read_text()) == json.loads(json.dumps(doc))
    R = doc["acc_matrix"]
    assert R[1][0] == R[0][0]  # task 0's weights are frozen, its mask, BN and head its own: no forgetting
    assert doc["final_avg_acc"] > 0.6 and doc["forgetting"] == 0.0
    assert doc["density_per_task"] == pytest.approx([0.3, 0.3], abs=0.01)
    assert 0 < doc["owned_fraction_per_task"][1] < doc["owned_fraction_per_task"][0]
    assert {"masks", "weights", "state", "metadata"} <= set(doc["memory_bytes"])
    numel = doc["task_reports"][0]["masked_weights"]
    assert doc["memory_bytes"]["masks"] > 2 * math.ceil(numel / 8)  # two bit-packed masks + headers
    assert doc["memory_bytes"]["masks"] < 2 * math.ceil(numel / 8) + 8192


class Interrupt(Exception):
    pass


def test_a_resumed_task_continues_identically(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=2, epochs=2, max_steps_per_epoch=9,
                      options={"dst": {"density": 0.3, "update_frequency": 4, "growth": "unfired"}})

    def stop(t, epoch):
        if (t, epoch) == (1, 0):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path / "a", methods=["dst"], on_epoch_end=stop)
    resumed = run(cfg, digits, pretrained, tmp_path / "a", methods=["dst"])["dst"]
    straight = run(cfg, digits, pretrained, tmp_path / "b", methods=["dst"])["dst"]
    for name in (MASK, OWNED, STATE):  # masks, fired positions and step count came back from the checkpoint
        assert same_content(tmp_path / "a" / "dst" / "task01" / name,
                            tmp_path / "b" / "dst" / "task01" / name)
    assert resumed["acc_matrix"] == straight["acc_matrix"]


@pytest.mark.parametrize("options,rounds", [({}, [5, 10, 15]), ({"update_frequency": 6}, [6, 12])])
def test_prune_regrow_rounds_follow_the_task_length(digits, pretrained, tmp_path, options, rounds):
    """Unset, update_frequency is ceil(steps / 4): three rounds on any task length (the official fixed 400 never
    pruned within the demo's 18 or 54 steps); set, it is taken as given; never at the task's last step, after which
    nothing regrown could train (make_config: 2 epochs of 9 steps = 18)."""
    m = dst(digits, pretrained, tmp_path, density=0.3, **options)
    model = m.setup_task(0)
    assert m.total_steps == 18
    last, moved = {n: v.clone() for n, v in m.masks.items()}, []

    def check(model, step):
        if any(not torch.equal(last[n], m.masks[n]) for n in last):
            moved.append(step)
        last.update({n: v.clone() for n, v in m.masks.items()})

    train_steps(m, model, 0, 18, check)
    assert moved == rounds
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    assert m.task_report(0, m.ctx.task_dir(0))["update_frequency"] == rounds[0]


@pytest.mark.parametrize("epochs,milestones,options,want", [
    (2, [1], {}, 0.1 / (9 + 9 * 0.1)),  # 2 epochs of 9 steps, x0.1 from epoch 1: reach 9.9 steps
    (40, [20, 30], {}, 1e-3),  # 360 steps, x0.1 at 50% and 75%: reach 190 steps, enough for 1e-3
    (2, [1], {"lr": 3e-4}, 3e-4),  # an explicit lr is taken as given
    (2, [1], {"optimizer": "sgd"}, 1e-3),  # the reach argument is Adam's: SGD keeps the official value
])
def test_unset_lr_follows_the_schedule(digits, pretrained, tmp_path, epochs, milestones, options, want):
    """Adam moves a weight ~lr a step: an unset lr is the official 1e-3, raised to 0.1 / reach on a short schedule
    (incremental.methods._adam_reach), so a regrown weight (from 0) can reach the scale of the others within the
    task."""
    m = method_for("dst", digits, pretrained, tmp_path, epochs=epochs, milestones=milestones, options={"dst": options})
    model = m.setup_task(0)
    assert m.make_optimizer(m.param_groups(model)).param_groups[0]["lr"] == pytest.approx(want)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    assert m.task_report(0, m.ctx.task_dir(0))["lr"] == pytest.approx(want)
