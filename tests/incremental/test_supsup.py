"""SupSup (GG): frozen weights never change, every layer's supermask has the density of the official ER rule, the
straight-through gradient reaches the dropped scores, the stored task (bit-packed masks + BN + head) rebuilds a
model with identical predictions, and the bytes stored are the bits expected."""

import json
import math
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from base.config import ConfigError
from incremental.loop import run
from incremental.masks import load_masks, packed_bytes
from incremental.methods.supsup import (
    GAIN,
    MASKS,
    SIGNS,
    STATE,
    Options,
    Supermask,
    kept,
    layer_density,
    masked_layers,
    supermask_of,
)
from nws.artifact import ArtifactError
from nws.io import load_tensors
from tests import margin
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import method_for, sample_batch, train_a_little


def supsup(digits, pretrained, tmp_path, **options):
    return method_for("supsup", digits, pretrained, tmp_path, options={"supsup": options})


def payload(path) -> int:
    """Bytes of a safetensors file after its 8-byte length and JSON header."""
    blob = path.read_bytes()
    (header,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - header


def test_er_rule_matches_the_official_formula():
    opts = Options(er_scale=4)
    assert layer_density((16, 8, 3, 3), opts) == pytest.approx(4 * 24 / (16 * 8 * 9))
    assert layer_density((2, 3, 1, 1), opts) == 0.5  # capped
    assert layer_density((2, 64), Options(density_rule="uniform", density=0.3)) == 0.3
    assert kept(10, 0.25) == 10 - int(0.75 * 10)


@pytest.mark.parametrize("weights", ["signed_constant", "backbone"])
def test_masks_have_the_configured_density_and_weights_stay_frozen(digits, pretrained, tmp_path, weights):
    m = supsup(digits, pretrained, tmp_path, weights=weights, er_scale=2)
    model = m.setup_task(0)
    layers = masked_layers(model)
    frozen = {n: layer.parametrizations.weight.original.clone() for n, layer in layers.items()}
    bn_affine = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("bn1.weight", "bn1.bias"))}
    scores = {n: supermask_of(layer).scores.detach().clone() for n, layer in layers.items()}
    trainable = {id(p) for g in m.param_groups(model) for p in g["params"]}
    assert trainable == {id(supermask_of(layer).scores) for layer in layers.values()}
    opt = m.make_optimizer(m.param_groups(model))
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    x, y = next(iter(_loader(m)))
    for _ in range(3):
        F.cross_entropy(model.train()(x), y).backward()
        m.before_step(model)
        opt.step()
        opt.zero_grad()
    for name, layer in layers.items():
        assert torch.equal(layer.parametrizations.weight.original, frozen[name])  # W never written
        assert not torch.equal(supermask_of(layer).scores, scores[name])  # the scores did train
        mask = supermask_of(layer).mask()
        k = layer_density(tuple(mask.shape), m.opts)
        assert int(mask.sum()) == kept(mask.numel(), k)
        assert torch.equal(layer.weight, frozen[name] * mask)  # the layer computes with W ⊙ M
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bn_affine.items())
    if weights == "signed_constant":
        w = frozen["layer1.0.conv1"]
        fan = w[0].numel()
        assert torch.allclose(w.abs(), torch.full_like(w, GAIN / math.sqrt(fan)))
        assert 0.3 < (w > 0).float().mean() < 0.7
    else:
        backbone = load_tensors(pretrained / "plain_backbone.safetensors")
        assert torch.equal(frozen["layer1.0.conv1"], backbone["layer1.0.conv1.weight"])
        assert torch.equal(frozen["fc"], backbone["fc.weight"][:2])


def _loader(m, t=0):
    from loaders import make_loader

    return make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "train", "memory", batch_size=32, train=True)


def test_straight_through_gradient_reaches_every_score():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    w = conv.weight.detach().clone()
    parametrize.register_parametrization(conv, "weight", Supermask(tuple(w.shape), 0.3))
    sm = conv.parametrizations.weight[0]
    x = torch.randn(2, 3, 5, 5)
    conv(x).square().sum().backward()
    w_eff = (w * sm.mask()).requires_grad_(True)
    F.conv2d(x, w_eff).square().sum().backward()
    # d/ds of W ⊙ topk(|s|) with the mask's gradient passed straight through: dL/dW_eff ⊙ W ⊙ sign(s)
    assert torch.allclose(sm.scores.grad, w_eff.grad * w * sm.scores.detach().sign(), atol=1e-6)
    assert (sm.scores.grad[~sm.mask()] != 0).any()  # dropped entries learn too



def test_threshold_masks_pass_the_gradient_to_the_scores():
    """mask: threshold (official GetSubnetFast): mask = scores >= 0, the gradient reaches the scores unchanged."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    w = conv.weight.detach().clone()
    parametrize.register_parametrization(conv, "weight", Supermask(tuple(w.shape), None))
    sm = conv.parametrizations.weight[0]
    assert torch.equal(sm.mask(), sm.scores.detach() >= 0)
    x = torch.randn(2, 3, 5, 5)
    conv(x).square().sum().backward()
    w_eff = (w * sm.mask()).requires_grad_(True)
    F.conv2d(x, w_eff).square().sum().backward()
    assert torch.allclose(sm.scores.grad, w_eff.grad * w, atol=1e-6)  # no sign(s): d/ds of W ⊙ [s >= 0] ~ W


def test_the_gnu_recipe(digits, pretrained, tmp_path):
    """The GNu runs' recipe: RMSprop at 1e-4 (unset lr: not raised), no weight decay, lr constant over the task
    (the loop's milestones replaced), threshold masks stored with their learned density."""
    m = supsup(digits, pretrained, tmp_path, mask="threshold", optimizer="rmsprop", schedule="constant")
    model = m.setup_task(0)
    opt = m.make_optimizer(m.param_groups(model))
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["lr"] == 1e-4
    assert opt.param_groups[0]["weight_decay"] == 0
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
        g["lr"] = 1e-5  # as the loop's milestone would set it
    m.after_epoch(model, 0)
    m.before_step(model)
    assert opt.param_groups[0]["lr"] == 1e-4
    model = train_a_little(m, model, 0, steps=3)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    report = m.task_report(0, m.ctx.task_dir(0))
    assert 0.3 < report["density"] < 0.7  # scores start symmetric around 0: about half kept
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0))(x), model.eval()(x))

@pytest.mark.parametrize("weights,head", [("signed_constant", "mask"), ("backbone", "float")])
def test_artifact_round_trip_and_stored_bits(digits, pretrained, tmp_path, weights, head):
    m = supsup(digits, pretrained, tmp_path, weights=weights, head=head)
    for t in range(2):
        model = train_a_little(m, m.setup_task(t), t, steps=3)
        folder = m.ctx.task_dir(t)
        folder.mkdir(parents=True)
        m.write_artifact(model, t, folder)
        rebuilt = m.rebuild(t, folder)
        assert not any(parametrize.is_parametrized(x) for x in rebuilt.modules())  # a plain network
        x = sample_batch(m, t)
        with torch.no_grad():
            assert torch.equal(model.eval()(x), rebuilt(x))
        masks = load_masks(folder / MASKS)
        assert ("fc" in masks) == (head == "mask")
        assert all(m_.dtype == torch.bool for m_ in masks.values())
        assert payload(folder / MASKS) == packed_bytes(masks) == sum(math.ceil(v.numel() / 8) for v in masks.values())
        state = load_tensors(folder / STATE)
        bns = [k for k in state if k.endswith("running_mean")]
        assert bns and all(state[k].dtype == torch.float32 for k in state)
        assert any(k.startswith("fc.") for k in state) == (head == "float")
    report = m.task_report(1, m.ctx.task_dir(1))
    assert report["bits_per_weight"] == pytest.approx(1.0, abs=0.01)
    assert report["mask_payload_bytes"] == payload(m.ctx.task_dir(1) / MASKS)
    if weights == "signed_constant":  # the shared weights: one sign bit each
        signs = load_masks(m.ctx.method_dir / SIGNS)
        assert payload(m.ctx.method_dir / SIGNS) == packed_bytes(signs)
        net = m.ctx.cfg.model.build(2)
        assert sum(s.numel() for s in signs.values()) == sum(p.numel() for n, p in net.named_parameters()
                                                             if n.endswith("weight") and p.dim() > 1)


def test_per_task_batchnorm_statistics(digits, pretrained, tmp_path):
    m = supsup(digits, pretrained, tmp_path)
    model = train_a_little(m, m.setup_task(0), 0, steps=3)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    fresh = m.setup_task(1).state_dict()
    stored = load_tensors(m.ctx.task_dir(0) / STATE)
    key = "layer1.0.bn1.running_mean"
    assert torch.equal(fresh[key], torch.zeros_like(fresh[key]))  # task 1 starts from fresh statistics
    assert not torch.equal(stored[key], fresh[key])  # task 0's own statistics are in its artifact


def test_rebuild_refuses_a_mask_that_does_not_fit(digits, pretrained, tmp_path):
    from incremental.masks import save_masks

    m = supsup(digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(m.setup_task(0), 0, folder)
    masks = load_masks(folder / MASKS)
    masks["layer1.0.conv1"] = masks["layer1.0.conv1"][:1]
    save_masks(folder / MASKS, masks)
    with pytest.raises(ArtifactError, match=r"masks.safetensors: no mask of shape .* for 'layer1.0.conv1'"):
        m.rebuild(0, folder)


def test_options_are_validated(digits, pretrained, tmp_path):
    for bad, match in [({"nonsense": 1}, "nonsense"), ({"er_scale": 0}, "er_scale"), ({"density": 1.5}, "density"),
                       ({"weights": "random"}, "weights")]:
        with pytest.raises(ConfigError, match=rf"incremental.options.supsup.*{match}"):
            supsup(digits, pretrained, tmp_path / match, **bad)
    # superfluous output rows: rows of the masked head only, and at least every task's classes (2 here)
    for bad, match in [({"output_size": 10, "head": "float"}, " superfluous neurons .* masked head; head is 'float'"),
                       ({"output_size": 1}, " 1 is fewer than the 2 classes of task task00")]:
        with pytest.raises(ValueError, match=rf"incremental.options.supsup.output_size:?{match}"):
            supsup(digits, pretrained, tmp_path / f"rows{bad['output_size']}", **bad).setup_task(0)
    m = supsup(digits, pretrained, tmp_path / "rows", output_size=7)
    assert m.setup_task(1).fc.weight.shape[0] == 7 and m.head_rows() == 7


def test_cosine_schedule_and_its_checkpoint(digits, pretrained, tmp_path):
    m = supsup(digits, pretrained, tmp_path, lr=1e-3)  # make_config: 2 epochs
    model = m.setup_task(0)
    opt = m.make_optimizer(m.param_groups(model))
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    m.before_step(model)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    m.after_epoch(model, 0)
    state = m.checkpoint_state()
    m.setup_task(0)  # a resumed task: set up again, then the checkpoint restores the epoch
    m.load_checkpoint_state(state)
    m.before_step(model)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_end_to_end_two_tasks(digits, pretrained, tmp_path):
    # 3 short epochs: ~27 steps (the stored BatchNorm statistics are recomputed for the final masks either way)
    cfg = make_config(num_tasks=2, epochs=3, milestones=[], max_steps_per_epoch=12,
                      options={"supsup": {"er_scale": 16}})
    doc = run(cfg, digits, pretrained, tmp_path / "out", methods=["supsup"])["supsup"]
    assert json.loads((tmp_path / "out" / "supsup" / "metrics.json").read_text()) == json.loads(json.dumps(doc))
    margin.above("supsup final avg acc", doc["final_avg_acc"], 0.75)  # frozen random signs; chance 0.5
    assert doc["forgetting"] == 0.0
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "frozen_weights", "masks", "state", "metadata"}
    folder = tmp_path / "out" / "supsup"
    assert mem["frozen_weights"] == (folder / SIGNS).stat().st_size
    assert mem["masks"] == sum((folder / d / MASKS).stat().st_size for d in doc["task_dirs"])
    assert len(doc["density_per_task"]) == 2 and 0 < doc["density"] < 0.5


@pytest.mark.parametrize("epochs,options,want", [
    (2, {}, 0.1 / (9 * (1 + 0.5))),  # 2 epochs of 9 steps, cosine factors 1 and 0.5: reach 13.5 steps
    (250, {}, 1e-3),  # the official 250 epochs: reach ~1,130 steps, far more than the floor needs
    (2, {"lr": 2e-4}, 2e-4),  # an explicit lr is taken as given
    (2, {"schedule": "loop"}, 0.1 / (9 + 9 * 0.1)),  # the loop's schedule: x0.1 from epoch 1 (make_config)
])
def test_unset_lr_follows_the_schedule(digits, pretrained, tmp_path, epochs, options, want):
    """Adam moves a score ~lr a step: an unset lr is the official 1e-3, raised to 0.1 / reach on a short schedule
    (incremental.methods._adam_reach), so a score can cross its init range (±1/sqrt(fan_in)) within the task."""
    m = method_for("supsup", digits, pretrained, tmp_path, epochs=epochs, options={"supsup": options})
    model = m.setup_task(0)
    assert m.make_optimizer(m.param_groups(model)).param_groups[0]["lr"] == pytest.approx(want)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    assert m.task_report(0, m.ctx.task_dir(0))["lr"] == pytest.approx(want)

