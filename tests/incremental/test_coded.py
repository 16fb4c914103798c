"""Coded memory (incremental.coded, issue 15): every tensor kind comes back bit for bit from its coded file, and for
every method a tiny run's coded files rebuild task models with the logits of the stored ones, in no more bytes."""

import json

import pytest
import torch

from incremental import coded
from incremental.loop import run, task_list
from incremental.masks import save_masks
from incremental.methods import make_method
from incremental.methods.packnet import save_owners
from nws.io import load_metadata, load_tensors, save_tensors
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import sample_batch

METHODS = ("finetune", "supsup", "dst", "packnet", "piggyback", "ksm", "nws", "wsn", "hat")
# the component that gets smaller (measured stored / coded on this run: supsup 2.3, piggyback 1.6, packnet 1.17, dst
# 1.13); KSM's kernel masks (one bit a kernel, about half set after a few steps) and WSN's Huffman-coded mask blocks
# stay as stored
SPARSE_PARTS = {"supsup": "masks", "dst": "masks", "piggyback": "masks", "packnet": "owners"}


def kinds(path):
    return {k: v["kind"] for k, v in json.loads(load_metadata(path)[coded.KEY]).items()}


def round_trip(src, tmp_path):
    dst = tmp_path / "coded.safetensors"
    dst.write_bytes(coded.encode_file(src))
    tensors, meta = coded.decode_file(dst)
    assert coded.same_tensors(tensors, load_tensors(src)) and meta == load_metadata(src)
    assert coded.decode_bytes(dst) == src.read_bytes()
    assert dst.stat().st_size <= src.stat().st_size
    return dst


def test_every_tensor_kind_round_trips_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    sparse = torch.rand(64, 64, 3, 3, generator=g) < 0.025  # SupSup's density
    masks = {"sparse": sparse, "dense": torch.rand(300, generator=g) < 0.4, "empty": torch.zeros(50, dtype=torch.bool),
             "odd": torch.rand(13, generator=g) < 0.5}  # 13 bits: a zero-padded last byte
    save_masks(tmp_path / "masks.safetensors", masks, metadata={"task": "t"})
    dst = round_trip(tmp_path / "masks.safetensors", tmp_path)
    assert kinds(dst)["sparse"] in ("bits", "sparse")  # ~0.17 bits a weight instead of 1
    owners = {"conv": torch.randint(0, 5, (64, 32, 3, 3), generator=g, dtype=torch.uint8)}
    owners["conv"][:, :16] = 0  # most weights free: the joined values code better than 3 independent planes
    save_owners(tmp_path / "owners.safetensors", owners)
    dst = round_trip(tmp_path / "owners.safetensors", tmp_path)
    assert kinds(dst) == {"conv.bit0": "planes"}
    floats = torch.randn(100, generator=g)
    floats[:2] = torch.tensor([-0.0, float("nan")])
    save_tensors(tmp_path / "mixed.safetensors", {"w": floats, "steps": torch.tensor(123456789),
                                                  "flags": torch.rand(400, generator=g) < 0.05,
                                                  "small": torch.randint(-3, 4, (500,), generator=g)})
    dst = round_trip(tmp_path / "mixed.safetensors", tmp_path)
    assert "w" not in kinds(dst) and kinds(dst)["small"] == "values"  # floats stay as stored
    noise = {"signs": torch.rand(4000, generator=g) < 0.5}  # incompressible: the file is copied as it is
    save_masks(tmp_path / "signs.safetensors", noise)
    assert coded.encode_file(tmp_path / "signs.safetensors") == (tmp_path / "signs.safetensors").read_bytes()


@pytest.fixture(scope="module")
def tiny_run(digits, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("coded_run")
    cfg = make_config(num_tasks=2, epochs=1, max_steps_per_epoch=4)
    return cfg, out, run(cfg, digits, pretrained, out, methods=list(METHODS))


@pytest.mark.parametrize("name", METHODS)
def test_rebuilt_from_the_coded_files_gives_the_stored_logits(tiny_run, digits, pretrained, tmp_path, name):
    cfg, out, results = tiny_run
    doc = json.loads((out / name / "metrics.json").read_text())
    stored, mem = doc["memory_bytes"], doc["memory_coded_bytes"]
    assert set(mem) == set(stored) and mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert all(mem[k] <= stored[k] for k in stored)
    assert doc["memory_coded_bytes_cumulative"][-1] == mem["total"]
    assert len(doc["memory_coded_bytes_cumulative"]) == 2
    if name in SPARSE_PARTS:
        part = SPARSE_PARTS[name]
        assert mem[part] < stored[part], (part, mem[part], stored[part])
    method = make_method(name, cfg, digits, pretrained, out / name, task_list(digits, 2))
    restored = coded.restore(method, 2, tmp_path / name)
    for t in range(2):
        x = sample_batch(method, t)
        with torch.no_grad():
            want = method.rebuild(t, method.ctx.task_dir(t)).eval()(x)
            got = restored.rebuild(t, restored.ctx.task_dir(t)).eval()(x)
        assert torch.equal(want, got)
