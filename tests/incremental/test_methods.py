"""NWS and Finetune as plug-ins: a stored task artifact rebuilds a model with identical predictions, task t starts
from task t-1's searched kernels, and a corrupted artifact is refused with the file's name."""

import pytest
import torch
import torch.nn.functional as F

import nws
from data_prep.loaders import make_loader
from incremental.evaluate import evaluate_stored
from incremental.loop import make_accelerator, task_list
from incremental.methods import make_method
from incremental.stored import seal_shared, seal_task
from nws.artifact import ArtifactError
from nws.io import load_tensors
from tests.incremental.fixtures import make_config


def method_for(name, digits, pretrained, out, **inc):
    cfg = make_config(**inc)
    m = make_method(name, cfg, digits, pretrained, out / name, task_list(digits, None))
    m.ctx.method_dir.mkdir(parents=True)
    m.prepare()
    return m


def train_a_little(m, model, t, steps=4):
    """A few real SGD steps with the method's loss, so the stored task differs from its starting point."""
    opt = torch.optim.SGD([p for g in m.param_groups(model) for p in g["params"]], lr=0.1, momentum=0.9)
    model.train()
    loader = make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "train", "memory", batch_size=32, train=True)
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        extra = m.extra_loss(model)
        (loss if extra is None else loss + extra).backward()
        opt.step()
        opt.zero_grad()
        if i + 1 == steps:
            break
    return model.eval()


def sample_batch(m, t):
    x, _ = next(iter(make_loader(m.ctx.data_dir / m.ctx.tasks[t].name, "test", "memory", batch_size=64)))
    return x


@pytest.mark.parametrize("codec,head", [("packed", "nws"), ("entropy", "float"), ("delta", "nws"),
                                        ("smallest", "float")])
def test_nws_artifact_round_trip_gives_identical_predictions(digits, pretrained, tmp_path, codec, head):
    m = method_for("nws", digits, pretrained, tmp_path, codec=codec, head=head)
    for t in range(2):  # task 1 can be delta-coded against task 0
        model = train_a_little(m, m.setup_task(t), t)
        folder = m.ctx.task_dir(t)
        m.write_artifact(model, t, folder)
        rebuilt = m.rebuild(t, folder)
        assert not any(isinstance(x, nws.NWSLayer) for x in rebuilt.modules())  # plain layers on K
        x = sample_batch(m, t)
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt.eval()(x))
        assert isinstance(model.fc, nws.NWSLayer) == (head == "nws")
    stored = m.indices(1)
    assert m.run_report([m.task_report(0, m.ctx.task_dir(0))])["kernels_per_task"] == [
        sum(v.numel() for v in stored.values())]
    if codec == "delta":
        from nws.artifact import read_manifest
        assert read_manifest(m.ctx.task_dir(1))["codec"] == "delta"


def test_nws_task_starts_from_the_previous_tasks_searched_kernels(digits, pretrained, tmp_path):
    m = method_for("nws", digits, pretrained, tmp_path)
    model = train_a_little(m, m.setup_task(0), 0)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    prev = m.rebuild(0, m.ctx.task_dir(0)).state_dict()
    nxt = m.setup_task(1)
    pools = load_tensors(pretrained / "pools.safetensors")
    for name, layer in nws.nws_layers(nxt):
        assert layer.mode == "search"
        assert torch.equal(layer.pool, pools[name])
        assert torch.equal(layer.weight, prev[f"{name}.weight"])  # W_1 = D(C_0; M), Algorithm 1 line 3
    trained = {id(p) for g in m.param_groups(nxt) for p in g["params"]}
    assert all(id(layer.weight) in trained and id(layer.pool) not in trained for _, layer in nws.nws_layers(nxt))
    bn = {k: v for k, v in nxt.state_dict().items() if "running_mean" in k}
    assert all(torch.equal(v, prev[k]) for k, v in bn.items())  # BatchNorm carried over as well


def test_finetune_starts_from_the_backbone_and_round_trips(digits, pretrained, tmp_path):
    m = method_for("finetune", digits, pretrained, tmp_path)
    backbone = load_tensors(pretrained / "plain_backbone.safetensors")
    model = m.setup_task(0)
    assert all(torch.equal(v, backbone[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert model.fc.out_features == 2
    model = train_a_little(m, model, 0)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(model(x), m.rebuild(0, m.ctx.task_dir(0)).eval()(x))


def test_corrupted_artifact_is_refused_naming_the_file(digits, pretrained, tmp_path):
    m = method_for("nws", digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(train_a_little(m, m.setup_task(0), 0, steps=1), 0, folder)
    seal_task(folder, {})
    seal_shared(m.ctx.method_dir, m.shared_files())
    loader = make_loader(digits / m.ctx.tasks[0].name, "test", "memory", batch_size=64)
    assert evaluate_stored(m, 0, loader, make_accelerator(m.inc)) > 0.5
    blob = bytearray((folder / "indices.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x10
    (folder / "indices.bin").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="indices.bin: checksum mismatch"):
        evaluate_stored(m, 0, loader, make_accelerator(m.inc))
    with pytest.raises(ArtifactError, match="indices.bin: checksum mismatch"):
        m.rebuild(0, folder)  # nws.artifact checks too, whoever calls


def test_corrupted_shared_pools_are_refused(digits, pretrained, tmp_path):
    m = method_for("nws", digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(m.setup_task(0), 0, folder)
    seal_task(folder, {})
    seal_shared(m.ctx.method_dir, m.shared_files())
    with open(m.pools_path, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    loader = make_loader(digits / m.ctx.tasks[0].name, "test", "memory", batch_size=64)
    with pytest.raises(ArtifactError, match="pools.safetensors: checksum mismatch"):
        evaluate_stored(m, 0, loader, make_accelerator(m.inc))
