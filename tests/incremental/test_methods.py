"""NWS and Finetune as plug-ins: a stored task artifact rebuilds a model with identical predictions, task t starts
from task t-1's searched kernels (task 0 coded against the base model's indices, a shared file), and a corrupted
artifact, a corrupted shared file or a changed base model after tasks were stored is refused with the file's name."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import nws
from base.layout import BASE_MODEL
from incremental.evaluate import accuracy, evaluate_stored
from incremental.loop import make_accelerator, task_list
from incremental.methods import make_method
from incremental.methods.nws import BASE_INDICES
from incremental.stored import seal_shared, seal_task
from loaders import make_loader
from nws.artifact import INDICES, MANIFEST, ArtifactError, read_manifest
from nws.io import atomic_write_bytes, atomic_write_json, load_tensors, read_json, sha256_file
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
    if codec == "delta":  # task 0 against the base model's indices, task 1 against task 0
        assert [read_manifest(m.ctx.task_dir(t))["codec"] for t in range(2)] == ["delta", "delta"]


def test_nws_task0_is_coded_against_the_base_model(digits, pretrained, tmp_path):
    """Task 0's near blob refers to the shared copy of the base model's indices; the 10-way pretraining head has
    another kernel count than the 2-way task head, so the head is coded alone; the rebuilt model predicts alike."""
    m = method_for("nws", digits, pretrained, tmp_path, codec="near")
    assert m.shared_files()["base_indices"] == [m.base_indices_path]
    assert m.base_indices_path.read_bytes() == (pretrained / BASE_MODEL / INDICES).read_bytes()
    model = train_a_little(m, m.setup_task(0), 0)
    folder = m.ctx.task_dir(0)
    m.write_artifact(model, 0, folder)
    blob = (folder / INDICES).read_bytes()
    assert read_manifest(folder)["codec"] == "near" and blob[5] == 5  # near, prev covering some layers only
    base, idx = m.base_indices(), m.indices(0)
    assert base["fc"].numel() != idx["fc"].numel() and list(idx) == list(base)
    assert torch.equal(idx["conv1"], nws.export_indices(model)["conv1"])
    with pytest.raises(ValueError, match="needs the previous task"):
        nws.codec.decode(blob, pools=m.pools())
    assert len(blob) < len(nws.codec.encode(idx, read_manifest(folder)["pool_sizes"], "entropy"))
    x = sample_batch(m, 0)
    fresh = method_for("nws", digits, pretrained, tmp_path / "again", codec="near")  # a new reader: files only
    shutil.copytree(folder, fresh.ctx.task_dir(0))
    with torch.no_grad():
        assert torch.equal(model(x), fresh.rebuild(0, fresh.ctx.task_dir(0)).eval()(x))


def test_nws_refuses_a_changed_base_model_once_tasks_are_stored(digits, pretrained, tmp_path):
    pre = tmp_path / "pretrain"
    shutil.copytree(pretrained, pre)
    m = method_for("nws", digits, pre, tmp_path)
    first = m.base_indices_path.read_bytes()
    m.prepare()  # idempotent
    assert m.base_indices_path.read_bytes() == first
    m.write_artifact(m.setup_task(0), 0, m.ctx.task_dir(0))
    assert (m.ctx.task_dir(0) / MANIFEST).is_file()  # task 0 stored
    # another base model (one index changed), written as the pretrain stage would (manifest checksums updated)
    base = nws.codec.decode(first)
    base["conv1"][0] = (base["conv1"][0] + 1) % m.pools()["conv1"].shape[0]
    sizes = read_manifest(pre / BASE_MODEL)["pool_sizes"]
    atomic_write_bytes(pre / BASE_MODEL / INDICES, nws.codec.encode(base, sizes, "packed"))
    manifest = read_json(pre / BASE_MODEL / MANIFEST)
    path = pre / BASE_MODEL / INDICES
    manifest["files"][INDICES] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    atomic_write_json(pre / BASE_MODEL / MANIFEST, manifest)
    with pytest.raises(ValueError, match="base_model/indices.bin differs from .*base_indices.bin, the base model's "
                                         "indices tasks \\[0\\] were stored with"):
        m.prepare()
    assert m.base_indices_path.read_bytes() == first  # the copy the stored task needs is kept
    fresh = method_for("nws", digits, pre, tmp_path / "new")  # no task stored yet: the new base is taken
    assert torch.equal(fresh.base_indices()["conv1"], base["conv1"])


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
    trained = train_a_little(m, m.setup_task(0), 0, steps=1)
    m.write_artifact(trained, 0, folder)
    seal_task(folder, {})
    seal_shared(m.ctx.method_dir, m.shared_files())
    loader = make_loader(digits / m.ctx.tasks[0].name, "test", "memory", batch_size=64)
    # intact, the stored task evaluates to exactly the trained model's accuracy (its forward value is K = pool[indices])
    assert evaluate_stored(m, 0, loader, make_accelerator(m.inc)) == accuracy(trained, loader, make_accelerator(m.inc))
    blob = bytearray((folder / "indices.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x10
    (folder / "indices.bin").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="indices.bin: checksum mismatch"):
        evaluate_stored(m, 0, loader, make_accelerator(m.inc))
    with pytest.raises(ArtifactError, match="indices.bin: checksum mismatch"):
        m.rebuild(0, folder)  # nws.artifact checks too, whoever calls


@pytest.mark.parametrize("victim", ["pools.safetensors", BASE_INDICES])
def test_corrupted_shared_files_are_refused(digits, pretrained, tmp_path, victim):
    m = method_for("nws", digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(m.setup_task(0), 0, folder)
    seal_task(folder, {})
    seal_shared(m.ctx.method_dir, m.shared_files())
    with open(m.ctx.method_dir / victim, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    loader = make_loader(digits / m.ctx.tasks[0].name, "test", "memory", batch_size=64)
    with pytest.raises(ArtifactError, match=f"{victim}: checksum mismatch"):
        evaluate_stored(m, 0, loader, make_accelerator(m.inc))


@pytest.mark.parametrize("start", ["previous", "pretrained"])
def test_nws_task_starts_from_the_previous_task_or_the_pretrained_network(digits, pretrained, tmp_path, start):
    """`incremental.options.nws.start`: task 1's temporary kernels start as task 0 stored them (official) or as the
    pretrained base network has them."""
    m = method_for("nws", digits, pretrained, tmp_path, options={"nws": {"start": start}})
    base = {n: v.clone() for n, v in nws.export_indices(m.setup_task(0)).items()}
    model = train_a_little(m, m.setup_task(0), 0, steps=6)
    m.write_artifact(model, 0, m.ctx.task_dir(0))
    stored = nws.export_indices(m.load(0))
    assert any(not torch.equal(stored[n], base[n]) for n in base if n != "fc")  # task 0 moved off the base
    start_of_1 = nws.export_indices(m.setup_task(1))
    want = stored if start == "previous" else base
    assert all(torch.equal(start_of_1[n], want[n]) for n in base if n != "fc")
