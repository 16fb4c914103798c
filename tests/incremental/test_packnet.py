"""PackNet as a plug-in: a task trains only the weights it owns and never changes another task's (bit for bit),
pruning frees the smallest weights of the task, task i computes only with weights of tasks <= i, the owner map is
stored at a few bits per weight, and a rebuilt task predicts exactly as the trained one."""

import json
import math
import os

import pytest
import torch

from base.config import ConfigError
from incremental.loop import run
from incremental.methods._masked_net import masked_params
from incremental.methods.packnet import NETWORK, OWNERS, STATE, load_owners, save_owners
from incremental.stored import promote, staged_records
from nws.io import load_tensors, save_tensors
from tests import margin
from tests.incremental.bn_check import accuracy_with_fresh_statistics, assert_statistics_match_weights, method_of
from tests.incremental.fixtures import make_config
from tests.incremental.test_dst import Interrupt, payload_bytes, same_content, train_steps
from tests.incremental.test_methods import method_for, sample_batch


def packnet(digits, pretrained, tmp_path, epochs=2, weight_decay=1e-5, **options):
    return method_for("packnet", digits, pretrained, tmp_path, epochs=epochs, weight_decay=weight_decay,
                      options={"packnet": options})


def store(m, model, t):
    """write_artifact, then what the loop does once the task is sealed: promote the staged shared files."""
    m.write_artifact(model, t, m.ctx.task_dir(t))
    promote(m.ctx.method_dir, staged_records(m.ctx.method_dir, m.shared_files()), m.ctx.task_dir(t))


def train_task(m, t, steps=4):
    """Train, prune (after_epoch of the last training epoch), retrain, store: one PackNet task."""
    model = train_steps(m, m.setup_task(t), t, steps)
    m.after_epoch(model, m.train_epochs - 1)
    model = train_steps(m, model.train(), t, steps)
    store(m, model, t)
    return model


def test_owner_map_round_trip_and_bits(tmp_path):
    gen = torch.Generator().manual_seed(0)
    owners = {"a.weight": torch.randint(0, 6, (16, 3, 3, 3), generator=gen, dtype=torch.uint8),
              "b.weight": torch.randint(0, 6, (7, 5), generator=gen, dtype=torch.uint8)}
    owners["b.weight"][0, 0] = 5
    assert save_owners(tmp_path / "o.safetensors", owners) == 3  # owners 0..5: 3 bits per weight
    back = load_owners(tmp_path / "o.safetensors")
    assert all(torch.equal(back[n], owners[n]) for n in owners) and back["b.weight"].dtype == torch.uint8
    assert payload_bytes(tmp_path / "o.safetensors") == 3 * sum(math.ceil(o.numel() / 8) for o in owners.values())
    assert save_owners(tmp_path / "z.safetensors", {n: torch.zeros_like(o) for n, o in owners.items()}) == 1


def test_pruning_frees_the_smallest_weights_of_the_task(digits, pretrained, tmp_path):
    m = packnet(digits, pretrained, tmp_path, prune_perc=0.6)
    model = train_steps(m, m.setup_task(0), 0, 3)
    assert all(bool((o == 1).all()) for o in m.owners.values())  # task 0 takes every weight
    before = {n: p.detach().clone() for n, p in masked_params(model).items()}
    m.after_epoch(model, 0)  # train_epochs = round(2/3 · 2) = 1: prune after the first epoch
    assert m.pruned
    for n, p in masked_params(model).items():
        kept, freed = m.owners[n] == 1, m.owners[n] == 0
        assert int(freed.sum()) == round(0.6 * p.numel()) and bool((kept | freed).all())
        assert not bool(p.detach()[freed].any())  # freed weights are 0
        assert before[n][freed].abs().max() <= before[n][kept].abs().min()
    m.after_epoch(model, 0)  # once only
    assert sum(int((o == 0).sum()) for o in m.owners.values()) == sum(round(0.6 * o.numel())
                                                                       for o in m.owners.values())


def test_packnet_never_changes_another_tasks_weights(digits, pretrained, tmp_path):
    m = packnet(digits, pretrained, tmp_path, weight_decay=0.5)  # weight decay pulls on every weight
    train_task(m, 0)
    stored0 = load_tensors(m.network_path)
    owners0 = load_owners(m.owners_path)
    model = m.setup_task(1)
    for n, p in masked_params(model).items():  # task 1 starts with task 0's weights and zeros where free
        assert torch.equal(p.detach(), torch.where(owners0[n] == 1, stored0[n], torch.zeros(())))
    assert all(torch.equal(m.owners[n], torch.where(owners0[n] == 1, 1, 2).to(torch.uint8)) for n in owners0)

    def check(model, step):
        for n, p in masked_params(model).items():
            mine = owners0[n] == 1
            assert torch.equal(p.detach()[mine], stored0[n][mine])

    changed = {n: p.detach().clone() for n, p in masked_params(train_steps(m, model, 1, 5, check)).items()}
    assert any(not torch.equal(changed[n][owners0[n] == 0], stored0[n][owners0[n] == 0]) for n in changed)
    m.after_epoch(model, 0)
    train_steps(m, model.train(), 1, 3, check)
    store(m, model, 1)
    stored1, owners1 = load_tensors(m.network_path), load_owners(m.owners_path)
    for n in owners0:
        mine = owners0[n] == 1
        assert torch.equal(stored1[n][mine], stored0[n][mine]) and bool((owners1[n][mine] == 1).all())
        assert set(owners1[n].unique().tolist()) <= {0, 1, 2}


def test_round_trip_and_task_i_ignores_later_tasks(digits, pretrained, tmp_path):
    m = packnet(digits, pretrained, tmp_path)
    x0 = sample_batch(m, 0)
    model0 = train_task(m, 0)
    with torch.no_grad():
        out0 = model0.eval()(x0)
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x0), out0)
    model1 = train_task(m, 1)
    x1 = sample_batch(m, 1)
    with torch.no_grad():
        assert torch.equal(m.rebuild(1, m.ctx.task_dir(1)).eval()(x1), model1.eval()(x1))
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x0), out0)  # task 1 changed nothing of task 0
    values, owners = load_tensors(m.network_path), load_owners(m.owners_path)
    noisy = {n: torch.where(owners[n] == 2, torch.randn(v.shape) * 10, v) for n, v in values.items()}
    save_tensors(m.network_path, noisy)  # scramble every weight task 1 owns
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x0), out0)
        assert not torch.equal(m.rebuild(1, m.ctx.task_dir(1)).eval()(x1), model1(x1))


def test_stored_bytes(digits, pretrained, tmp_path):
    m = packnet(digits, pretrained, tmp_path)
    for t in range(2):
        model = train_task(m, t)
    numel = {n: p.numel() for n, p in masked_params(model).items()}
    assert payload_bytes(m.network_path) == 4 * sum(numel.values())  # one float32 network for all tasks
    assert payload_bytes(m.owners_path) == 2 * sum(math.ceil(v / 8) for v in numel.values())  # owners 0..2: 2 bits
    state = load_tensors(m.ctx.task_dir(1) / STATE)
    assert not set(state) & set(numel) and {"fc.weight", "bn1.running_mean"} <= set(state)
    assert payload_bytes(m.ctx.task_dir(1) / STATE) == sum(v.numel() * v.element_size() for v in state.values())
    report = m.task_report(1, m.ctx.task_dir(1))
    assert report["owner_bits"] == 2 and report["owned_fraction"] == pytest.approx(0.75 * 0.25, abs=0.01)
    assert report["free_fraction"] == pytest.approx(0.75 * 0.75, abs=0.01)


def test_options_are_validated(digits, pretrained, tmp_path):
    for i, bad in enumerate(({"prune_perc": 1.0}, {"prune_perc": -0.1}, {"train_epochs": 0}, {"ratio": 0.5},
                             {"train_epochs": 3}, {"bn": "eval"}, {"bn_batches": -1})):
        with pytest.raises(ConfigError, match="incremental.options.packnet"):
            packnet(digits, pretrained, tmp_path / str(i), **bad)


def test_packnet_end_to_end_and_resume(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=2, epochs=2, max_steps_per_epoch=9, options={"packnet": {"train_epochs": 1}})

    def stop(t, epoch):
        if (t, epoch) == (1, 0):  # right after task 1 was pruned
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path / "a", methods=["packnet"], on_epoch_end=stop)
    resumed = run(cfg, digits, pretrained, tmp_path / "a", methods=["packnet"])["packnet"]
    doc = run(cfg, digits, pretrained, tmp_path / "b", methods=["packnet"])["packnet"]
    for name in ("task01/" + STATE, NETWORK, OWNERS):  # owners and the pruned flag came back
        assert same_content(tmp_path / "a" / "packnet" / name, tmp_path / "b" / "packnet" / name)
    assert resumed["acc_matrix"] == doc["acc_matrix"]
    assert json.loads((tmp_path / "b" / "packnet" / "metrics.json").read_text()) == json.loads(json.dumps(doc))
    R = doc["acc_matrix"]
    assert R[1][0] == R[0][0] and doc["forgetting"] == 0.0 and doc["final_avg_acc"] > 0.6
    assert doc["owned_fraction_per_task"] == pytest.approx([0.25, 0.1875], abs=0.01)
    assert doc["owner_bits_per_weight"] == 2
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "network", "owners", "state", "metadata"}
    assert mem["network"] == (tmp_path / "b" / "packnet" / NETWORK).stat().st_size  # counted once
    assert mem["owners"] == (tmp_path / "b" / "packnet" / OWNERS).stat().st_size


def test_short_schedule_stores_the_statistics_of_the_pruned_weights(digits, pretrained, tmp_path):
    """Pruned (75%) after one epoch of 9 steps and retrained for one more, task 0's stored BN statistics are those of
    its pruned weights re-estimated over its training data, so the stored model is as good as those weights are.
    Before, the stored moving averages still described the unpruned network: 71% (chance 50%) where the same
    weights with re-estimated statistics gave 100%."""
    cfg = make_config(num_tasks=1, epochs=2)
    doc = run(cfg, digits, pretrained, tmp_path, methods=["packnet"])["packnet"]
    m = method_of("packnet", cfg, digits, pretrained, tmp_path)
    assert_statistics_match_weights(m, 0)
    stored, fresh = doc["acc_matrix"][0][0], accuracy_with_fresh_statistics(m, 0)
    margin.above("packnet short schedule task 0 acc", stored, 0.9)
    margin.below("packnet stored vs fresh-statistics acc gap", abs(stored - fresh), 0.05)


def test_frozen_batchnorm_keeps_the_pretrained_batchnorm(digits, pretrained, tmp_path):
    """bn: frozen (the official PackNet): BN computes with the pretrained statistics and affine parameters in
    training too, trains nothing, and is stored unchanged with the head."""
    m = packnet(digits, pretrained, tmp_path, bn="frozen", bn_batches=5)
    model = m.setup_task(0)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "bn" in n or "downsample.1" in n)
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(model.train()(x), model.eval()(x))
    model = train_task(m, 0, steps=3)
    m.after_epoch(model, m.inc.epochs - 1)  # the last epoch: no re-estimation of frozen statistics
    store(m, model, 0)
    plain = load_tensors(pretrained / "plain_backbone.safetensors")
    state = load_tensors(m.ctx.task_dir(0) / STATE)
    bn = [k for k in state if not k.startswith("fc.")]
    assert bn and all(torch.equal(state[k], plain[k]) for k in bn)
    assert not torch.equal(state["fc.weight"], model.fc.weight.detach() * 0)  # the head is the task's own
    assert m.run_report([m.task_report(0, m.ctx.task_dir(0))])["bn"] == "frozen"


def test_a_step_budget_sets_the_pruning_epoch_and_the_last_epoch(digits, pretrained, tmp_path):
    """With the budget in steps (incremental.schedule: 27 steps of 9 an epoch = 3 epochs), pruning comes after 2 of
    the task's epochs and the statistics are re-estimated after its last."""
    cfg = make_config(num_tasks=1, epochs=None, steps=27, milestones=[0.5])
    doc = run(cfg, digits, pretrained, tmp_path, methods=["packnet"])["packnet"]
    assert doc["train_epochs_per_task"] == [2] and doc["owned_fraction_per_task"] == pytest.approx([0.25], abs=0.01)
    assert_statistics_match_weights(method_of("packnet", cfg, digits, pretrained, tmp_path), 0)


CRASH_CFG = {"num_tasks": 2, "epochs": 2, "max_steps_per_epoch": 9, "options": {"packnet": {"train_epochs": 1}}}


@pytest.fixture(scope="module")
def uninterrupted(digits, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("packnet_whole")
    return out, run(make_config(**CRASH_CFG), digits, pretrained, out, methods=["packnet"])["packnet"]


@pytest.mark.parametrize("point", ["before the seal", "after the seal", "between the renames",
                                   "before shared.json"])
def test_a_kill_while_storing_a_task_resumes(digits, pretrained, tmp_path, monkeypatch, uninterrupted, point):
    """Issue 17: PackNet rewrote its shared network and owner map before the task was sealed, and a kill in that
    window made every rerun exit 4. Now the new shared files are staged beside the old ones and the seal is the one
    switch: killed at each write point of task 1's storing, the rerun finishes with the uninterrupted run's files
    and accuracies, and no staged file is left."""
    import incremental.loop as loop
    import incremental.stored as stored

    cfg, out = make_config(**CRASH_CFG), tmp_path / "a"
    task1 = out / "packnet" / "task01"

    def crash_if_task1(real, when=lambda: True):
        def wrapped(*args, **kwargs):
            if task1.exists() and when():
                raise Interrupt(point)
            return real(*args, **kwargs)
        return wrapped

    if point == "before the seal":
        monkeypatch.setattr(loop, "seal_task", crash_if_task1(loop.seal_task))
    elif point == "after the seal":
        monkeypatch.setattr(loop, "promote", crash_if_task1(loop.promote, lambda: stored.is_sealed(task1)))
    elif point == "between the renames":
        real_replace, renamed = os.replace, []

        def replace(src, dst):
            if stored.is_sealed(task1):
                if renamed:
                    raise Interrupt(point)
                renamed.append(dst)
            real_replace(src, dst)

        monkeypatch.setattr(stored, "os", type("os", (), {"replace": staticmethod(replace)}))
    else:
        monkeypatch.setattr(loop, "seal_shared", crash_if_task1(loop.seal_shared, lambda: stored.is_sealed(task1)))
    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, out, methods=["packnet"])
    monkeypatch.undo()
    staged = sorted(p.name for p in (out / "packnet").glob("*" + stored.STAGED))
    assert staged == ([] if point == "before shared.json" else
                      [NETWORK + ".next", OWNERS + ".next"] if point in ("before the seal", "after the seal") else
                      [OWNERS + ".next"])
    resumed = run(cfg, digits, pretrained, out, methods=["packnet"])["packnet"]
    ref_dir, ref = uninterrupted
    assert resumed["acc_matrix"] == ref["acc_matrix"]
    for name in (NETWORK, OWNERS, "task01/" + STATE):
        assert same_content(out / "packnet" / name, ref_dir / "packnet" / name), name
    assert not list((out / "packnet").glob("*" + stored.STAGED))


def test_retraining_after_the_budget_as_in_the_appendix(digits, pretrained, tmp_path, capsys):
    """retrain_epochs (seed 001_ App. 5: 100 epochs, prune 60%, retrain 30): the task trains its whole budget (2
    epochs), is pruned, then retrains 1 epoch more at the lr the last milestone left; with the option unset the same
    budget is split 2/3 + 1/3 as before."""
    cfg = make_config(num_tasks=1, epochs=2, milestones=[1], options={"packnet": {"prune_perc": 0.6,
                                                                                  "retrain_epochs": 1}})
    doc = run(cfg, digits, pretrained, tmp_path / "appendix", methods=["packnet"])["packnet"]
    sched = doc["schedule_per_task"][0]
    assert (sched["epochs"], sched["extra_epochs"], sched["steps"]) == (3, 1, 3 * sched["steps_per_epoch"])
    assert sched["milestones"] == [sched["steps_per_epoch"]]  # the budget's milestone where it was
    assert doc["train_epochs_per_task"] == [2]  # pruned after the budget
    assert doc["owned_fraction_per_task"] == pytest.approx([0.4], abs=0.01)
    assert "3 epochs = " in capsys.readouterr().out
    assert_statistics_match_weights(method_of("packnet", cfg, digits, pretrained, tmp_path / "appendix"), 0)
    margin.above("packnet 2 + 1 retraining epochs, task 0 acc", doc["acc_matrix"][0][0], 0.9)
    split = run(make_config(num_tasks=1, epochs=3, milestones=[1]), digits, pretrained, tmp_path / "split",
                methods=["packnet"])["packnet"]
    assert split["train_epochs_per_task"] == [2] and "extra_epochs" not in split["schedule_per_task"][0]
    with pytest.raises(ConfigError, match="train_epochs=4 exceeds the 3 epochs"):
        packnet(digits, pretrained, tmp_path / "bad", epochs=2, retrain_epochs=1, train_epochs=4)
