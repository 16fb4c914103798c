"""Piggyback as a plug-in: binary masks with a straight-through gradient over a backbone that never changes, 1 bit
per masked weight on disk, and a rebuilt plain model that predicts exactly as the trained one."""

import json
import math

import pytest
import torch

from base.config import ConfigError
from incremental.loop import run, task_list
from incremental.masks import load_masks, packed_bytes
from incremental.methods import make_method
from incremental.methods._frozen_backbone import STATE, masked_layers, original_weights
from incremental.methods.piggyback import MASKS, ElementMask
from nws.artifact import ArtifactError
from nws.io import load_metadata, load_tensors
from tests import margin
from tests.incremental.bn_check import assert_statistics_match_weights, method_of
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import method_for, sample_batch, train_a_little


def payload_bytes(path):
    """Bytes of a safetensors file after its header (8-byte length + JSON header): what its tensors hold."""
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def plain_convs(pretrained):
    """{conv name: weight} of the pretrain stage's plain backbone, read independently of the method."""
    state = load_tensors(pretrained / "plain_backbone.safetensors")
    return {k[: -len(".weight")]: v for k, v in state.items() if v.dim() == 4 and not k.startswith("fc.")}


def test_binary_mask_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    w, g = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    mask = ElementMask(w.shape, 1e-2, 5e-3)
    assert torch.equal(mask.real.detach(), torch.full(w.shape, 1e-2))
    with torch.no_grad():
        mask.real.copy_(torch.rand(w.shape) * 0.02 - 0.005)  # on both sides of the threshold
    (mask(w) * g).sum().backward()
    keep = mask.real.detach() > 5e-3
    assert 0 < int(keep.sum()) < keep.numel()
    assert torch.equal(mask(w).detach(), torch.where(keep, w, torch.zeros_like(w)))
    assert torch.equal(mask.binary(), keep)
    assert torch.allclose(mask.real.grad, g * w)  # d/dm (W ⊙ b(m)) with the identity for db/dm


def test_masks_train_and_the_backbone_stays_bit_identical(digits, pretrained, tmp_path):
    m = method_for("piggyback", digits, pretrained, tmp_path)
    plain = plain_convs(pretrained)
    shared = load_tensors(m.ctx.method_dir / "backbone.safetensors")
    assert set(shared) == {f"{k}.weight" for k in plain} and all(torch.equal(shared[f"{k}.weight"], v)
                                                                  for k, v in plain.items())
    model = m.setup_task(0)
    assert model.fc.out_features == 2
    trained = {id(p) for g in m.param_groups(model) for p in g["params"]}
    originals = original_weights(model)
    assert set(originals) == set(plain) and not any(id(w) in trained or w.requires_grad for w in originals.values())
    model = train_a_little(m, model, 0, steps=6)
    for name, w in original_weights(model).items():
        assert torch.equal(w, plain[name])  # bit-identical after training
    reals = [mod.real.detach() for mod in model.modules() if isinstance(mod, ElementMask)]
    assert any(not torch.equal(r, torch.full_like(r, 1e-2)) for r in reals)  # the masks did learn


def test_round_trip_is_identical_and_stores_one_bit_per_weight(digits, pretrained, tmp_path):
    m = method_for("piggyback", digits, pretrained, tmp_path)
    model = train_a_little(m, m.setup_task(1), 1)
    with torch.no_grad():  # some weights masked out, so the mask file holds real information
        for mod in model.modules():
            if isinstance(mod, ElementMask):
                mod.real[..., 0] = -1.0
    folder = m.ctx.task_dir(1)
    m.write_artifact(model, 1, folder)
    rebuilt = m.rebuild(1, folder).eval()
    assert not any(hasattr(c, "parametrizations") for _, c in masked_layers(rebuilt))
    x = sample_batch(m, 1)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    masks = load_masks(folder / MASKS)
    plain = plain_convs(pretrained)
    assert {k: tuple(v.shape) for k, v in masks.items()} == {k: tuple(v.shape) for k, v in plain.items()}
    expected = sum(math.ceil(w.numel() / 8) for w in plain.values())
    assert payload_bytes(folder / MASKS) == expected == packed_bytes(masks)
    for name, w in rebuilt.state_dict().items():
        if name.endswith(".weight") and name[: -len(".weight")] in masks:
            assert torch.equal(w, plain[name[: -len(".weight")]] * masks[name[: -len(".weight")]])
    state = load_tensors(folder / STATE)
    bn = {k for k in state if k.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in state if "running_mean" in n}}
    assert set(state) == bn | {"fc.weight"}  # BN and head only: no backbone weight per task
    report = m.task_report(1, folder)
    assert report["density"] == pytest.approx(sum(int(v.sum()) for v in masks.values()) / report["weights"])
    assert 1 <= report["bits_per_weight"] < 1.2


def test_a_mask_of_the_wrong_shape_is_refused(digits, pretrained, tmp_path):
    m = method_for("piggyback", digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(m.setup_task(0), 0, folder)
    from incremental.masks import save_masks
    masks = load_masks(folder / MASKS)
    masks["conv1"] = masks["conv1"][:, :1]
    save_masks(folder / MASKS, masks)
    with pytest.raises(ArtifactError, match="masks.safetensors: mask 'conv1'"):
        m.rebuild(0, folder)


@pytest.mark.parametrize("options,match", [({"mask_init": 1e-3}, "must exceed threshold"),
                                           ({"lr_mask": 0}, "lr_mask"), ({"sparsity": 0.5}, "sparsity")])
def test_options_are_validated(digits, pretrained, tmp_path, options, match):
    cfg = make_config(options={"piggyback": options})
    with pytest.raises(ConfigError, match=match):
        make_method("piggyback", cfg, digits, pretrained, tmp_path / "piggyback", task_list(digits, None))


def test_end_to_end_two_tasks(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=2, epochs=1, max_steps_per_epoch=8,
                      options={"piggyback": {"lr_mask": 1e-3, "lr_head": 1e-2}})
    run(cfg, digits, pretrained, tmp_path / "out", methods=["piggyback"])
    out = tmp_path / "out" / "piggyback"
    doc = json.loads((out / "metrics.json").read_text())
    assert [len(r) for r in doc["acc_matrix"]] == [2, 2]
    margin.above("piggyback final avg acc", doc["final_avg_acc"], 0.75)  # 2-way digit tasks: chance 0.5
    assert doc["forgetting"] == 0.0  # each task has its own masks, BN and head over an untouched backbone
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "backbone", "masks", "state", "metadata"}
    assert mem["backbone"] == (out / "backbone.safetensors").stat().st_size  # counted once, not per task
    assert mem["masks"] == sum((out / d / MASKS).stat().st_size for d in doc["task_dirs"])
    assert 1 <= doc["bits_per_weight"] < 1.2 and len(doc["density_per_task"]) == 2
    shared = load_tensors(out / "backbone.safetensors")
    plain = plain_convs(pretrained)
    assert shared.keys() == {f"{k}.weight" for k in plain}
    assert all(torch.equal(shared[f"{k}.weight"], v) for k, v in plain.items())  # Adam never touched it


class Interrupt(Exception):
    pass


def check_resume_is_identical(name, files, digits, pretrained, tmp_path):
    """Interrupted in task 1 after its first epoch and run again, the method stores the same bytes and accuracies
    as a run that was never interrupted (the masks and Adam state come back from the epoch checkpoint)."""
    cfg = make_config(num_tasks=2, epochs=2, max_steps_per_epoch=4)

    def stop(t, epoch):
        if (t, epoch) == (1, 0):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path / "a", methods=[name], on_epoch_end=stop)
    resumed = run(cfg, digits, pretrained, tmp_path / "a", methods=[name], on_epoch_end=stop)[name]
    straight = run(cfg, digits, pretrained, tmp_path / "b", methods=[name])[name]
    for folder in ("task00", "task01"):
        for file in files:  # same tensors and metadata (the header's metadata order varies from write to write)
            a, b = tmp_path / "a" / name / folder / file, tmp_path / "b" / name / folder / file
            ta, tb = load_tensors(a), load_tensors(b)
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
            assert load_metadata(a) == load_metadata(b)
    assert resumed["acc_matrix"] == straight["acc_matrix"]


def test_a_resumed_task_continues_identically(digits, pretrained, tmp_path):
    check_resume_is_identical("piggyback", (MASKS, STATE), digits, pretrained, tmp_path)


def check_short_schedule(name, digits, pretrained, tmp_path):
    """Two epochs of 9 steps (lr ×0.1 after the first) at the method's official lrs: the masks must be able to
    cross their threshold (lrs scaled by the schedule's reach), and the stored BN statistics are those of the
    final masks. Before, no mask entry moved more than a fifth of the way to its threshold and the head ~1%: the
    stored tasks sat near chance (Piggyback 49%, KSM 50% on task 0)."""
    cfg = make_config(num_tasks=1, epochs=2)
    doc = run(cfg, digits, pretrained, tmp_path, methods=[name])[name]
    m = method_of(name, cfg, digits, pretrained, tmp_path)
    assert_statistics_match_weights(m, 0)
    margin.above(f"{name} short schedule task 0 acc", doc["acc_matrix"][0][0], 0.9)
    sched = m.schedule(0)
    assert sched.steps_per_epoch >= 8 and sched.reach() == pytest.approx(1.1 * sched.steps_per_epoch)
    scale = doc["lr_scale_per_task"][0]
    opts = m.opts  # the scaled mask lr lets an entry travel min_travel gaps, no more
    assert scale * opts.lr_mask * sched.reach() == pytest.approx(opts.min_travel * (opts.mask_init - opts.threshold))


def test_official_lrs_learn_on_a_short_schedule(digits, pretrained, tmp_path):
    check_short_schedule("piggyback", digits, pretrained, tmp_path)


@pytest.mark.parametrize("name", ["piggyback", "ksm"])
def test_long_schedules_keep_the_official_lrs(digits, pretrained, tmp_path, name):
    """The paper's 100 epochs (×0.1 at 50 and 80): ~900 steps on a 2-digit task, lrs exactly as given; 2 epochs of
    9 steps: one factor on every lr left at its default (masks, BN, head); min_travel 0 or a given lr: as given."""
    long = method_for(name, digits, pretrained, tmp_path / "long", epochs=100, milestones=[50, 80])
    groups = long.param_groups(long.setup_task(0))
    assert [g["lr"] for g in groups] == [long.opts.lr_mask, long.opts.lr_mask, long.opts.lr_head]
    short = method_for(name, digits, pretrained, tmp_path / "short", epochs=2, milestones=[1])
    scale = short.lr_scale(0)
    assert scale > 5
    assert [g["lr"] for g in short.param_groups(short.setup_task(0))] == [
        scale * short.opts.lr_mask, scale * short.opts.lr_mask, scale * short.opts.lr_head]
    off = method_for(name, digits, pretrained, tmp_path / "off", epochs=2, options={name: {"min_travel": 0}})
    assert off.lr_scale(0) == 1.0
    given = method_for(name, digits, pretrained, tmp_path / "given", epochs=2, options={name: {"lr_head": 1e-2}})
    assert given.lrs(0) == (scale * given.opts.lr_mask, scale * given.opts.lr_mask, 1e-2)  # a given lr is kept
    bn = method_for(name, digits, pretrained, tmp_path / "bn", epochs=2,
                    options={name: {"lr_mask": 1e-3, "lr_bn": 0.1}})
    assert bn.lrs(0)[:2] == (1e-3, 0.1)


@pytest.mark.parametrize("name", ["piggyback", "ksm"])
def test_frozen_batchnorm_shares_the_pretrained_batchnorm(digits, pretrained, tmp_path, name):
    """bn: frozen (the official Piggyback script without --train_bn): BN computes with the pretrained statistics in
    training too, is in no optimizer group, and every task stores it unchanged, so the tasks differ only by their
    masks and heads; the masks still learn."""
    # 36 steps at the lrs of test_end_to_end_two_tasks: 1.00 for both methods (masks at 1e-5, i.e. a head over the
    # frozen features: 0.93). On 8 steps the head had not converged: the fixture's backbone trained 15 steps, so
    # its running statistics barely left their initial values and frozen BN normalises poorly (0.52-0.63)
    cfg = make_config(num_tasks=2, epochs=4, milestones=[3],
                      options={name: {"bn": "frozen", "lr_mask": 1e-3, "lr_head": 1e-2}})
    m = method_for(name, digits, pretrained, tmp_path / "unit", num_tasks=2, epochs=1,
                   options={name: {"bn": "frozen"}})
    model = m.setup_task(0)
    grouped = {id(p) for g in m.param_groups(model) for p in g["params"]}
    bn = [p for n, p in model.named_parameters() if ".bn" in n or n.startswith("bn") or "downsample.1" in n]
    assert bn and not any(id(p) in grouped or p.requires_grad for p in bn)
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(model.train()(x), model.eval()(x))
    doc = run(cfg, digits, pretrained, tmp_path / "out", methods=[name])[name]
    margin.above(f"{name} frozen BN final avg acc", doc["final_avg_acc"], 0.75)  # 2-way digit tasks: chance 0.5
    plain = load_tensors(pretrained / "plain_backbone.safetensors")
    for folder in doc["task_dirs"]:
        state = load_tensors(tmp_path / "out" / name / folder / STATE)
        kept = [k for k in state if not k.startswith("fc.")]
        assert kept and all(torch.equal(state[k], plain[k]) for k in kept)


@pytest.mark.parametrize("name", ["piggyback", "ksm"])
def test_the_fully_connected_network_is_masked(digits, lenet_pretrained, tmp_path, name):
    """LeNet-300-100 has no convolution: every Linear but the head carries a mask (the official ElementWiseLinear;
    before, nothing was masked and the run crashed in task_report on zero masked weights), the rebuilt model gives
    the trained logits exactly, and two tasks learn over the frozen network."""
    from base.config import validate
    from pipeline.config import experiment_schema
    from tests.conftest import SEED
    from tests.incremental.fixtures import DATA, LENET

    cfg = validate(experiment_schema(), {"name": "t", "seeds": [SEED], "data": DATA, "model": LENET, "incremental": {
        "epochs": 3, "batch_size": 32, "milestones": [2], "track": False, "augment": False, "num_tasks": 2}})
    m = make_method(name, cfg, digits, lenet_pretrained, tmp_path / "unit", task_list(digits, 2))
    m.ctx.method_dir.mkdir(parents=True)
    m.prepare()
    model = train_a_little(m, m.setup_task(0), 0, steps=6)
    assert sorted(original_weights(model)) == ["features.0", "features.2"]  # the head, `fc`, is the task's own
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0))(x), model.eval()(x))
    doc = run(cfg, digits, lenet_pretrained, tmp_path / "run", methods=[name])[name]
    margin.above(f"{name} lenet300 final avg acc", doc["final_avg_acc"], 0.75)  # chance 0.5
