"""HAT as a plug-in: the gates sit on every unit of a ResNet and of the fully connected nets, s is annealed per
batch (Eq. 3), the loss carries Eq. 5, gradients are conditioned (Eq. 2) and compensated (Eq. 4), a rebuilt task
predicts exactly as the trained one, and an earlier task is protected exactly where its gates are binary: its logits
stay bit-identical after the next task when they all are; with the gates training leaves, the changed shared weights
are only those Eq. 2 leaves open (the drift is measured)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from base.config import ConfigError, validate
from incremental.loop import run, task_list
from incremental.methods import make_method
from incremental.methods._hat_gates import attach, condition, gates_of, plan
from incremental.methods._masked_net import masked_params
from incremental.methods.hat import EMBEDDINGS, NETWORK, STATE
from incremental.stored import promote, staged_records
from loaders import make_loader
from nws import models
from nws.io import load_tensors
from pipeline.config import experiment_schema
from tests import margin
from tests.conftest import SEED
from tests.incremental.bn_check import assert_statistics_match_weights, method_of
from tests.incremental.fixtures import DATA, LENET, make_config
from tests.incremental.test_dst import same_content
from tests.incremental.test_methods import method_for, sample_batch
from tests.incremental.test_piggyback import check_resume_is_identical


def hat(digits, pretrained, tmp_path, **inc):
    return method_for("hat", digits, pretrained, tmp_path, **inc)


def train(m, model, t, steps, check=None):
    """`steps` steps as incremental.train takes them (loss + Eq. 5, before_step, step, after_step; after_epoch at
    the end of each epoch); `check(model)` after each step."""
    opt = m.make_optimizer(m.param_groups(model))
    per_epoch = m.schedule(t).steps_per_epoch
    model.train()
    loader = make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "train", "memory", batch_size=32, train=True)
    step = 0
    while step < steps:
        for x, y in loader:
            (F.cross_entropy(model(x), y) + m.extra_loss(model)).backward()
            m.before_step(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            m.after_step(model, step)
            if step % per_epoch == 0:
                m.after_epoch(model, step // per_epoch - 1)
            if check is not None:
                check(model)
            if step == steps:
                break
    return model.eval()


def store(m, model, t):
    m.write_artifact(model, t, m.ctx.task_dir(t))
    promote(m.ctx.method_dir, staged_records(m.ctx.method_dir, m.shared_files()), m.ctx.task_dir(t))


def test_every_unit_is_gated_and_every_shared_weight_has_its_view():
    """ResNet-18: the stem, each block's conv1, each block's output (conv2 and the shortcut together); the FC nets:
    each hidden layer. With every gate open (e = 6 at s_max: σ(2400) = 1 in float32) the gated network computes the
    plain one bit for bit; with every gate closed nothing reaches the head."""
    torch.manual_seed(0)
    net = models.build("resnet18", num_classes=3, stem="cifar", width=0.125)
    spec = plan(net)
    assert set(spec.views) == set(masked_params(net))
    assert len(spec.gates) == 1 + 2 * 8 and spec.gates["layer2.0.conv2"] == ("layer2.0", 16)
    assert spec.views["layer2.0.shortcut.0.weight"] == ("layer2.0.conv2", "layer1.1.conv2")
    assert spec.views["layer2.0.conv1.weight"] == ("layer2.0.conv1", "layer1.1.conv2")
    assert spec.views["conv1.weight"] == ("conv1", None)
    x = torch.randn(4, 3, 16, 16)
    plain = copy.deepcopy(net).eval()
    gated = attach(net, {n: torch.full((u,), 6.0) for n, (_, u) in spec.gates.items()}, 400.0).eval()
    with torch.no_grad():
        assert torch.equal(gated(x), plain(x))
        for e in gates_of(gated).emb:
            e.fill_(-6.0)
        assert not gated(x).any()
    for arch in ("fc1024", "lenet300"):
        mlp = models.build(arch, num_classes=2, input_size=8)
        spec = plan(mlp)
        assert list(spec.views) == ["features.0.weight", "features.2.weight"] == list(masked_params(mlp))
        assert spec.views["features.2.weight"] == ("features.2", "features.0")
    emb = {"features.0": torch.randn(300), "features.2": torch.randn(100)}
    mlp = attach(models.build("lenet300", num_classes=2, input_size=8), emb, 3.0).eval()
    x = torch.randn(5, 1, 8, 8)
    w1, w2 = mlp.features[0].weight, mlp.features[2].weight
    h = torch.relu(x.flatten(1) @ w1.T) * torch.sigmoid(3.0 * emb["features.0"])  # official mlp_hat forward
    h = torch.relu(h @ w2.T) * torch.sigmoid(3.0 * emb["features.2"])
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.fc(h), atol=1e-6)
    with pytest.raises(ValueError, match="not VGG"):
        plan(models.build("vgg16", num_classes=2))


def test_eq2_conditions_a_weight_by_the_units_it_joins():
    a = {"c1": torch.tensor([1.0, 0.25, 0.0]), "c2": torch.tensor([1.0, 0.5])}
    back = condition(a, {"c1.w": ("c1", None), "c2.w": ("c2", "c1")},
                     {"c1.w": torch.Size([3, 2, 3, 3]), "c2.w": torch.Size([2, 3, 3, 3])})
    assert torch.equal(back["c1.w"][:, 0, 0, 0], torch.tensor([0.0, 0.75, 1.0]))
    assert torch.equal(back["c2.w"][:, :, 1, 1], torch.tensor([[0.0, 0.75, 1.0], [0.5, 0.75, 1.0]]))


def test_annealing_regularizer_compensation_clamp(digits, pretrained, tmp_path):
    """s runs 1/s_max → s_max over an epoch's batches and starts again (Eq. 3); Eq. 5 is c · mean gate for task 0;
    the embedding gradient is × s_max/s · (cosh(clamp(s·e)) + 1)/(cosh(e) + 1) (Eq. 4); embeddings end in ±6."""
    m = hat(digits, pretrained, tmp_path)
    model = m.setup_task(0).train()
    gates, per_epoch = gates_of(model), m.schedule(0).steps_per_epoch
    assert gates.s == pytest.approx(1 / 400) and per_epoch == 9
    reg = m.extra_loss(model)
    mean = torch.cat([torch.sigmoid(e / 400) for e in gates.emb]).mean()
    assert reg.item() == pytest.approx(0.75 * mean.item(), rel=1e-5)
    for _ in range(4):
        m.after_step(model, 0)
    s = gates.s
    assert s == pytest.approx(1 / 400 + (400 - 1 / 400) * 4 / 9)
    with torch.no_grad():
        gates.emb[0][:3] = torch.tensor([0.0, 0.3, -8.0])
    for p in model.parameters():  # an embedding's true gradient carries σ'(s·e) = 1/(2 cosh(s·e) + 2): tiny here
        p.grad = torch.ones_like(p) * (1e-20 if any(p is e for e in gates.emb) else 1.0)
    m.before_step(model)  # the clipping (norm 1e4) leaves these gradients alone
    e = gates.emb[0].detach()
    want = 1e-20 * 400 / s * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1)
    assert torch.allclose(gates.emb[0].grad, want, rtol=1e-5)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in masked_params(model).values())  # task 0: no Eq. 2
    m.after_step(model, 0)
    assert gates.emb[0][2].item() == -6.0 and gates.s == pytest.approx(1 / 400 + (400 - 1 / 400) * 5 / 9)
    m.after_epoch(model, 0)
    assert gates.s == pytest.approx(1 / 400)
    model.eval()
    assert gates.current_s() == 400


def test_a_rebuilt_task_gives_the_trained_logits(digits, pretrained, tmp_path):
    m = hat(digits, pretrained, tmp_path)
    model = train(m, m.setup_task(0), 0, 5)
    store(m, model, 0)
    rebuilt = m.rebuild(0, m.ctx.task_dir(0))
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    emb, state = load_tensors(m.ctx.task_dir(0) / EMBEDDINGS), load_tensors(m.ctx.task_dir(0) / STATE)
    assert {n: e.numel() for n, e in emb.items()} == {n: u for n, (_, u) in plan(model).gates.items()}
    assert "fc.weight" in state and "bn1.running_var" in state and not set(state) & set(masked_params(model))
    assert not any(k.startswith("hat.") for k in state)
    network = load_tensors(m.network_path)
    assert all(torch.equal(network[n], p.detach()) for n, p in masked_params(model).items())
    copied = copy.deepcopy(rebuilt)  # the hooks follow the copy's own embeddings
    with torch.no_grad():
        gates_of(copied).emb[0].fill_(-6.0)
        assert not torch.equal(copied(x), rebuilt(x))


def test_task0_is_bit_identical_after_task1_where_its_gates_are_binary(digits, pretrained, tmp_path):
    """Task 0's gates made binary (e = ±6 before it is stored): task 1, trained with weight decay and momentum
    (recipe paper, decay 0.5), changes shared weights, none that task 0 computes with, and task 0's rebuilt logits
    are bit-identical."""
    m = hat(digits, pretrained, tmp_path, recipe="paper", weight_decay=0.5)
    model0 = train(m, m.setup_task(0), 0, 5)
    with torch.no_grad():
        for e in gates_of(model0).emb:
            e.copy_(torch.where(e > 0, 6.0, -6.0))
    store(m, model0, 0)
    x0 = sample_batch(m, 0)
    with torch.no_grad():
        out0 = m.rebuild(0, m.ctx.task_dir(0))(x0)
    before = load_tensors(m.network_path)
    model1 = train(m, m.setup_task(1), 1, 6)
    assert all(bool(((b == 0) | (b == 1)).all()) for b in m.back.values())
    store(m, model1, 1)
    after = load_tensors(m.network_path)
    changed = sum(int((after[n] != before[n]).sum()) for n in after)
    assert changed > 0.3 * sum(b.numel() for b in after.values())  # task 1 did train the shared network
    for n, b in m.back.items():
        assert torch.equal(after[n][b == 0], before[n][b == 0])
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0))(x0), out0)


def test_weights_eq2_closes_never_move_and_the_drift_of_task0_is_measured(digits, pretrained, tmp_path):
    """With the gates training leaves: every step of task 1 keeps the weights with 1 - min(a_i, a_j) = 0 bit for
    bit; what changes is only where Eq. 2 leaves room, and task 0's predictions may move (measured, not assumed)."""
    m = hat(digits, pretrained, tmp_path)
    store(m, train(m, m.setup_task(0), 0, 9), 0)
    x0 = sample_batch(m, 0)
    with torch.no_grad():
        out0 = m.rebuild(0, m.ctx.task_dir(0))(x0)
    before = load_tensors(m.network_path)
    model = m.setup_task(1)
    held = {n: b == 0 for n, b in m.back.items()}
    assert 0 < sum(int(h.sum()) for h in held.values()) < sum(h.numel() for h in held.values())

    def check(model):
        for n, p in masked_params(model).items():
            assert torch.equal(p.detach()[held[n]], before[n][held[n]])

    store(m, train(m, model, 1, 9, check), 1)
    after = load_tensors(m.network_path)
    for n in after:
        moved = after[n] != before[n]
        assert not bool((moved & held[n]).any())
    report = m.task_report(0, m.ctx.task_dir(0))
    with torch.no_grad():
        out = m.rebuild(0, m.ctx.task_dir(0))(x0)
    agree = float((out.argmax(1) == out0.argmax(1)).float().mean())
    if report["fractional_units"] == 0:
        assert torch.equal(out, out0)
    margin.above("hat task 0 predictions kept after task 1", agree, 0.9)


def test_options_and_recipe(digits, pretrained, tmp_path):
    for i, bad in enumerate(({"smax": 1}, {"lamb": -1}, {"thres_emb": 0}, {"ratio": 2})):
        with pytest.raises(ConfigError, match="incremental.options.hat"):
            hat(digits, pretrained, tmp_path / str(i), options={"hat": bad})
    with pytest.raises(ConfigError, match="lr belong to hat's official recipe"):
        hat(digits, pretrained, tmp_path / "paper", options={"hat": {"lr": 0.1, "recipe": "paper"}})
    m = hat(digits, pretrained, tmp_path / "official")
    opt = m.make_optimizer(m.param_groups(m.setup_task(0)))
    assert isinstance(opt, torch.optim.SGD) and [g["lr"] for g in opt.param_groups] == [0.05] * 3
    assert all(g["momentum"] == 0 and g["weight_decay"] == 0 for g in opt.param_groups)
    # the shared SGD: its weight decay on BN and head; on the shared weights it is added to the gradient before
    # Eq. 2 scales it (so a weight earlier tasks fully use gets no decay either); none on the embeddings
    m = hat(digits, pretrained, tmp_path / "paper", recipe="paper", lr=0.02, momentum=0.8, weight_decay=0.5)
    model = m.setup_task(0)
    opt = m.make_optimizer(m.param_groups(model))
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.02, 0.8, 0.0), (0.02, 0.8, 0.0), (0.02, 0.8, 0.5)]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    m.before_step(model)
    assert all(torch.equal(p.grad, 0.5 * p.detach()) for p in masked_params(model).values())


def test_end_to_end_two_tasks_and_resume(digits, pretrained, tmp_path):
    """The loop on two digit tasks (2 epochs of 9 steps): measured 0.972 / 0.917, task 0 unmoved at 0.972."""
    cfg = make_config(num_tasks=2, epochs=2)
    doc = run(cfg, digits, pretrained, tmp_path / "e2e", methods=["hat"])["hat"]
    R = doc["acc_matrix"]
    margin.above("hat final avg acc", doc["final_avg_acc"], 0.8)  # chance 0.5
    margin.below("hat task 0 drop after task 1", R[0][0] - R[1][0], 0.1)
    assert set(doc["memory_bytes"]) == {"total", "network", "embeddings", "state", "metadata"}
    assert doc["memory_bytes"]["network"] == (tmp_path / "e2e" / "hat" / NETWORK).stat().st_size  # counted once
    assert len(doc["fractional_units_per_task"]) == 2 and doc["smax"] == 400
    assert 0 < doc["capacity_used_per_task"][0] <= doc["capacity_used_per_task"][1] <= 1
    assert_statistics_match_weights(method_of("hat", cfg, digits, pretrained, tmp_path / "e2e"), 1)
    check_resume_is_identical("hat", (EMBEDDINGS, STATE), digits, pretrained, tmp_path)
    assert same_content(tmp_path / "a" / "hat" / NETWORK, tmp_path / "b" / "hat" / NETWORK)


def test_fully_connected_lenet(digits, lenet_pretrained, tmp_path):
    """LeNet-300-100 (no BatchNorm): the round trip is exact and two tasks learn (measured final average 0.986)."""
    cfg = validate(experiment_schema(), {"name": "t", "seeds": [SEED], "data": DATA, "model": LENET, "incremental": {
        "epochs": 3, "batch_size": 32, "milestones": [2], "track": False, "augment": False, "num_tasks": 2}})
    doc = run(cfg, digits, lenet_pretrained, tmp_path / "run", methods=["hat"])["hat"]
    margin.above("hat lenet300 final avg acc", doc["final_avg_acc"], 0.8)
    m = method_of("hat", cfg, digits, lenet_pretrained, tmp_path / "run")
    assert math.prod(load_tensors(m.ctx.task_dir(1) / EMBEDDINGS)["features.0"].shape) == 300
    m = make_method("hat", cfg, digits, lenet_pretrained, tmp_path / "hat", task_list(digits, 2))
    m.ctx.method_dir.mkdir()
    m.prepare()
    model = train(m, m.setup_task(0), 0, 5)
    store(m, model, 0)
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0))(x), model(x))
