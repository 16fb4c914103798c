"""A task artifact rebuilds the identical task model from its files alone, and refuses corruption."""

import pytest
import torch

import nws
from nws.artifact import ArtifactError, load_task, read_manifest, save_task
from nws.near import neighbour_order


def _trained_like_task_model(seed=0):
    torch.manual_seed(seed)
    snet = nws.convert(nws.models.resnet18(num_classes=3, stem="cifar", width=0.125), pool_size=32,
                       pool_init="kmeans", seed=seed)
    snet.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics that differ from their initial values
            snet(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return snet


@pytest.mark.parametrize("mode", ["packed", "entropy", "smallest"])
def test_round_trip_gives_identical_predictions(tmp_path, mode):
    snet = _trained_like_task_model()
    snet.eval()
    x = torch.randn(5, 3, 16, 16)
    expected = snet(x)
    manifest = save_task(tmp_path / "task0", snet, codec_mode=mode, meta={"task": "t0"})
    assert manifest["kernels"] == sum(layer.num_groups for _, layer in nws.nws_layers(snet))

    fresh = nws.convert(nws.models.resnet18(num_classes=3, stem="cifar", width=0.125), pool_size=32, seed=9)
    nws.load_pools(fresh, nws.export_pools(snet))  # the shared pools, stored once elsewhere
    load_task(tmp_path / "task0", fresh)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    plain = nws.materialize(fresh).eval()
    torch.testing.assert_close(plain(x), expected)


def test_delta_artifact_needs_the_previous_task(tmp_path):
    snet = _trained_like_task_model()
    prev = nws.export_indices(snet)
    with torch.no_grad():  # a next task that changes a few kernels
        layer = dict(nws.nws_layers(snet))["layer1.0.conv1"]
        layer.weight.view(-1, 9)[:10] = layer.pool[3]
    save_task(tmp_path / "t1", snet, codec_mode="delta", prev=prev)
    cur = nws.export_indices(snet)
    decoded = nws.artifact.read_indices(tmp_path / "t1", prev=prev)
    assert all(torch.equal(decoded[k], cur[k]) for k in cur)
    with pytest.raises(ValueError):
        nws.artifact.read_indices(tmp_path / "t1", prev=None)


@pytest.mark.parametrize("victim", ["indices.bin", "state.safetensors"])
def test_corrupted_artifact_is_refused(tmp_path, victim):
    snet = _trained_like_task_model()
    save_task(tmp_path / "t", snet, codec_mode="packed")
    path = tmp_path / "t" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{victim}: checksum mismatch"):
        load_task(tmp_path / "t", snet)
    (tmp_path / "t" / victim).unlink()
    with pytest.raises(ArtifactError, match="missing file"):
        read_manifest(tmp_path / "t")


def test_artifact_for_another_network_is_refused(tmp_path):
    save_task(tmp_path / "t", _trained_like_task_model(), codec_mode="packed")
    other = nws.convert(nws.models.resnet18(num_classes=3, stem="cifar", width=0.125), pool_size=64, seed=0)
    with pytest.raises(ArtifactError, match="pools"):
        load_task(tmp_path / "t", other)


def test_near_artifact_rebuilds_the_model_from_prev_and_the_pools(tmp_path):
    snet = _trained_like_task_model()
    prev = nws.export_indices(snet)
    with torch.no_grad():  # a next task: some kernels step to the nearest other pool kernel
        layer = dict(nws.nws_layers(snet))["layer2.0.conv1"]
        order = torch.from_numpy(neighbour_order(layer.pool.numpy()).astype("int64"))
        layer.weight.view(-1, 9)[:300] = layer.pool[order[prev["layer2.0.conv1"][:300], 0]]
    snet.eval()
    x = torch.randn(4, 3, 16, 16)
    manifest = save_task(tmp_path / "t1", snet, codec_mode="smallest", prev=prev)
    assert manifest["codec"] == "near"
    fresh = nws.convert(nws.models.resnet18(num_classes=3, stem="cifar", width=0.125), pool_size=32, seed=9)
    nws.load_pools(fresh, nws.export_pools(snet))
    load_task(tmp_path / "t1", fresh, prev=prev)
    fresh.eval()
    torch.testing.assert_close(nws.materialize(fresh)(x), nws.materialize(snet)(x))
    with pytest.raises(ValueError, match="previous task"):
        load_task(tmp_path / "t1", fresh)


def test_first_task_against_a_base_model_with_another_head(tmp_path):
    """Task 0 coded against the base model's indices: the base's 10-way head has another kernel count than the task's
    3-way head and is left out of the reference; the rest is coded against it and the model rebuilds exactly."""
    base = nws.convert(nws.models.resnet18(num_classes=10, stem="cifar", width=0.125), pool_size=32,
                       pool_init="kmeans", seed=0)
    snet = _trained_like_task_model()
    nws.load_pools(snet, nws.export_pools(base))  # the same shared pools
    ref = nws.export_indices(base)
    idx = nws.export_indices(snet)
    with torch.no_grad():  # the task's kernels: the base model's, a few moved to another pool kernel
        for name, layer in nws.nws_layers(snet):
            if name != "fc":
                start = ref[name].clone()
                start[::7] = (start[::7] + 1) % layer.pool.shape[0]
                layer.weight.view(-1, layer.pool.shape[1]).copy_(layer.pool[start])
    assert ref["fc"].numel() != idx["fc"].numel()
    snet.eval()
    x = torch.randn(4, 3, 16, 16)
    manifest = save_task(tmp_path / "t0", snet, codec_mode="smallest", prev=ref)
    alone = save_task(tmp_path / "alone", snet, codec_mode="smallest")
    assert manifest["codec"] in ("delta", "near")
    assert manifest["files"]["indices.bin"]["bytes"] < 0.6 * alone["files"]["indices.bin"]["bytes"]
    fresh = nws.convert(nws.models.resnet18(num_classes=3, stem="cifar", width=0.125), pool_size=32, seed=9)
    nws.load_pools(fresh, nws.export_pools(snet))
    load_task(tmp_path / "t0", fresh, prev=ref)
    fresh.eval()
    assert torch.equal(fresh(x), snet(x))
    with pytest.raises(ValueError, match="different previous task"):
        load_task(tmp_path / "t0", fresh, prev={**ref, "conv1": ref["conv1"].flip(0)})
