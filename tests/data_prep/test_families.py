"""Task families (issue 16): permuted and rotated tasks over any source, seeded, stored in tasks.json and applied on
the fly by every loader format to the images of the `pretrain` unit, which the data stage writes once.

Real small data: scikit-learn's digits (8x8, 10 classes), prepared in both formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from base.config import ConfigError, config_hash, resolved, validate
from data_prep.config import DataConfig, TasksConfig
from data_prep.manifest import load_manifest, read_unit
from data_prep.prepare import prepare
from data_prep.sources import open_source
from data_prep.task_transform import TaskTransform, check_transform, permutation, rotate
from data_prep.tasks import FAMILY_TASKS_VERSION, Task, check_tasks, load_tasks, save_tasks, split_tasks
from loaders import make_loader
from pipeline.cli import main as nws
from pipeline.config import experiment_schema
from pipeline.task_labels import label

FORMATS = ("wds", "ffcv", "memory")

pytestmark = pytest.mark.filterwarnings(  # numba's known harmless finalizer KeyError at FFCV teardown
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def digits():
    return open_source("digits")


@pytest.fixture(scope="module")
def permuted(tmp_path_factory, digits):
    """Digits as 3 permuted tasks (seeds 5, 6, 7), both formats, 200 samples per shard (several shards a split)."""
    out = tmp_path_factory.mktemp("permuted")
    summary = prepare("digits", None, out, ("wds", "ffcv"), "permuted", {"count": 3, "seed": 5}, source=digits,
                      max_per_shard=200, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def rotated(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("rotated")
    prepare("digits", None, out, ("wds", "ffcv"), "rotated", {"count": 4}, source=digits, max_per_shard=200,
            progress=False)
    return out


def batches(unit_dir, split: str, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sample of a split in write order (x, y, position), no augmentation, no shuffle."""
    xs, ys, idx = [], [], []
    for x, y, i in make_loader(unit_dir, split, fmt, batch_size=128, train=False, with_index=True):
        xs.append(x)
        ys.append(y)
        idx.append(i)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


# ------------------------------------------------------------------------------------------------ task splits
def test_permuted_tasks_are_seeded_with_every_class(digits, tmp_path):
    tasks = split_tasks(digits, "permuted", count=3, seed=5)
    assert [t.name for t in tasks] == ["task00", "task01", "task02"]
    assert all(t.class_ids == list(range(10)) and t.class_names == [str(d) for d in range(10)] for t in tasks)
    # SupSup seeds task t's permutation with seed + t (seed 002_, data/mnist.py): task 0 is permuted too
    assert [t.transform for t in tasks] == [{"kind": "permute", "seed": s} for s in (5, 6, 7)]
    assert split_tasks(digits, "permuted", count=3, seed=5) == tasks  # the same every call
    assert split_tasks(digits, "permuted", count=3, seed=6) != tasks
    path = save_tasks(tmp_path / "tasks.json", tasks, {"kind": "permuted"})
    assert json.loads(path.read_text())["version"] == FAMILY_TASKS_VERSION
    reloaded, _ = load_tasks(path)
    assert reloaded == tasks
    for pixels in (64, 784):  # digits 8x8, (Fashion-)MNIST 28x28
        perms = [permutation(t.transform["seed"], pixels) for t in reloaded]
        again = [permutation(t.transform["seed"], pixels) for t in tasks]
        assert all(torch.equal(a, b) for a, b in zip(perms, again, strict=True))  # the same after a reload
        assert all(sorted(p.tolist()) == list(range(pixels)) for p in perms)
        assert not torch.equal(perms[0], torch.arange(pixels))  # not the identity
        assert len({tuple(p.tolist()) for p in perms}) == 3  # every task its own permutation
    # SupSup's draw: np.random.seed(i + seed); np.random.permutation(784)
    np.random.seed(5)
    assert np.array_equal(permutation(5, 784).numpy(), np.random.permutation(784))


def test_rotated_angles(digits):
    assert [t.transform["degrees"] for t in split_tasks(digits, "rotated", count=4)] == [0, 90, 180, 270]
    assert [t.transform["degrees"] for t in split_tasks(digits, "rotated", count=3, max_angle=180)] == [0, 60, 120]
    tasks = split_tasks(digits, "rotated", angles=[0, 45, -30])
    assert [t.transform for t in tasks] == [{"kind": "rotate", "degrees": a} for a in (0.0, 45.0, -30.0)]
    with pytest.raises(ValueError, match=r"'task00' and 'task01' transform the images alike"):
        split_tasks(digits, "rotated", angles=[0, 360])
    with pytest.raises(ValueError, match="count 3 but 2 angles"):
        split_tasks(digits, "rotated", count=3, angles=[0, 10])
    with pytest.raises(ValueError, match=r"task split 'rotated' does not take \['classes_per_task'\]"):
        split_tasks(digits, "rotated", count=3, classes_per_task=2)
    with pytest.raises(ValueError, match="a task family needs count >= 1"):
        split_tasks(digits, "permuted")


def test_old_tasks_json_loads_and_bad_transforms_are_refused(tmp_path, digits):
    blocks = split_tasks(digits, "blocks", classes_per_task=2)
    path = save_tasks(tmp_path / "tasks.json", blocks)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and all("transform" not in t for t in doc["tasks"])  # as written before families
    assert load_tasks(path)[0] == blocks and all(t.transform is None for t in blocks)
    doc = {"version": 2, "tasks": [{"name": "a", "class_names": ["0"], "class_ids": [0],
                                    "transform": {"kind": "permute", "seed": 1, "size": 8}}]}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"tasks.json: task 'a': transform: a 'permute' transform has exactly"):
        load_tasks(path)
    doc["tasks"][0]["transform"] = {"kind": "shear", "seed": 1}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="tasks.json: task 'a': transform: expected"):
        load_tasks(path)
    with pytest.raises(ValueError, match="seed must be an integer"):
        check_transform({"kind": "permute", "seed": -1})
    with pytest.raises(ValueError, match="a family's tasks all have one"):
        check_tasks([Task("a", ["0"], [0], {"kind": "permute", "seed": 0}), Task("b", ["1"], [1])])
    assert label(split_tasks(digits, "permuted", count=2, seed=3)[1]) == "perm 4"
    assert label(split_tasks(digits, "rotated", count=4)[1]) == "rot 90°"


# ------------------------------------------------------------------------------------------------ data stage
def test_images_are_written_once(permuted):
    out, summary = permuted
    manifest = load_manifest(out)
    assert sorted(manifest["units"]) == ["pretrain", "task00", "task01", "task02"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pretrain"]  # no folder per task
    base = manifest["units"]["pretrain"]
    for t, name in enumerate(("task00", "task01", "task02")):
        entry = read_unit(out / name)
        assert entry["view_of"] == "pretrain" and entry["transform"] == {"kind": "permute", "seed": 5 + t}
        assert entry["splits"] == base["splits"] and entry["mean"] == base["mean"]
        assert summary["units"][name]["bytes"] == 0 and summary["units"][name]["splits"] == {"train": 1438,
                                                                                            "test": 359}
    assert summary["bytes_total"] == summary["units"]["pretrain"]["bytes"]
    tasks, meta = load_tasks(out / "tasks.json")
    assert [t.transform["seed"] for t in tasks] == [5, 6, 7] and meta["task_kind"] == "permuted"
    assert nws(["data", "verify", str(out)]) == 0


def test_a_rerun_skips_and_a_damaged_base_is_named(tmp_path, digits, capsys):
    out = tmp_path / "data"
    prepare("digits", None, out, ("wds",), "permuted", {"count": 2}, source=digits, progress=False)
    again = prepare("digits", None, out, ("wds",), "permuted", {"count": 2}, source=digits, progress=False)
    assert again["built"] == [] and again["skipped"] == ["pretrain", "task00", "task01"]
    shard = next((out / "pretrain").glob("train-*.tar"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"pretrain/train-000000.tar: .* bytes, the manifest says"):
        make_loader(out / "task01", "train", "wds", train=False)
    assert nws(["data", "verify", str(out)]) == 4
    # a blocks request in the same folder later: the task names become units with folders again
    prepare("digits", None, out, ("wds",), "blocks", {"classes_per_task": 5}, source=digits, progress=False)
    assert "view_of" not in read_unit(out / "task01") and (out / "task01").is_dir()
    with pytest.raises(ValueError, match=r"pretraining set cannot be skipped \(data.pretrain_set"):
        prepare("digits", None, out, ("wds",), "permuted", {"count": 2}, source=digits, pretrain_set=False,
                progress=False)


# ------------------------------------------------------------------------------------------------ loaders
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_permuted_image_is_the_original_pixels_rearranged(permuted, split):
    out, _ = permuted
    base_x, base_y, base_i = batches(out / "pretrain", split, "memory")
    seen = {}
    for t, name in enumerate(("task00", "task01", "task02")):
        perm = permutation(5 + t, 64)
        for fmt in FORMATS:
            x, y, i = batches(out / name, split, fmt)
            assert torch.equal(i, base_i) and torch.equal(y, base_y)  # labels are the class ids
            flat, base_flat = x.flatten(2), base_x.flatten(2)
            assert torch.equal(flat, base_flat[:, :, perm])  # the task's permutation, every channel alike
            assert torch.equal(flat.sort(-1).values, base_flat.sort(-1).values)  # the same pixels
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(len(perm))
            assert torch.equal(flat[:, :, inverse], base_flat)  # undone bit for bit
            seen.setdefault(name, x)
            assert torch.equal(x, seen[name])  # every format gives the same tensors
    assert not torch.equal(seen["task00"], seen["task01"]) and not torch.equal(seen["task01"], seen["task02"])


def test_rotated_tasks_turn_the_image(rotated):
    out = rotated
    base = batches(out / "pretrain", "test", "memory")[0]
    for name, k in (("task00", 0), ("task01", 1), ("task02", 2), ("task03", 3)):
        for fmt in FORMATS:
            x = batches(out / name, "test", fmt)[0]
            # nearest sampling on a square image lands on pixel centres: measured max |difference| 0.0 for 0, 90,
            # 180 and 270 degrees (8x8 digits, also 4x4 and 28x28 random images), so exact equality is asserted
            assert torch.equal(x, torch.rot90(base, k, (-2, -1))), (name, fmt)


def test_rotation_direction_and_fill():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of the centre
    up = rotate(x, 90)  # counter-clockwise: to the top
    assert up[0, 0, 0, 2] == 1 and up.sum() == 1
    square = torch.ones(1, 3, 9, 9)
    turned = TaskTransform({"kind": "rotate", "degrees": 45})(square)
    assert turned[0, :, 0, 0].eq(0).all() and turned[0, :, 4, 4].eq(1).all()  # black corners, centre kept


def test_augmentation_is_refused_for_a_family_task(permuted):
    out, _ = permuted
    with pytest.raises(ValueError, match=r"task00: augmentation .* permutation.*incremental.augment: false"):
        make_loader(out / "task00", "train", "wds", train=True)
    make_loader(out / "task00", "train", "wds", train=True, augment=False)
    make_loader(out / "pretrain", "train", "wds", train=True)  # the base unit itself: plain images


def test_a_resized_input_is_permuted_at_the_network_size(permuted):
    out, _ = permuted
    x16 = next(iter(make_loader(out / "task01", "test", "memory", batch_size=4, train=False, image_size=16)))[0]
    base = next(iter(make_loader(out / "pretrain", "test", "memory", batch_size=4, train=False, image_size=16)))[0]
    assert x16.shape[-2:] == (16, 16)
    assert torch.equal(x16.flatten(2), base.flatten(2)[:, :, permutation(6, 256)])


# ------------------------------------------------------------------------------------------------ config
def test_the_config_refuses_bad_keys():
    schema = experiment_schema()

    def check(data: dict, match: str, inc: dict | None = None):
        with pytest.raises(ConfigError, match=match):
            validate(schema, {"data": data, "incremental": {"augment": False} if inc is None else inc})

    check({"tasks": {"kind": "permuted"}}, r"data.tasks: count: permuted tasks need the number of tasks")
    check({"tasks": {"kind": "permuted", "count": 0}}, r"data.tasks.count: Input should be greater than")
    check({"tasks": {"kind": "permuted", "count": 3, "angles": [0]}}, r"data.tasks: angles does not apply to kind "
                                                                      r"'permuted', which reads count, seed")
    check({"tasks": {"kind": "rotated", "count": 3, "seed": 1}}, r"seed does not apply to kind 'rotated'")
    check({"tasks": {"kind": "blocks", "classes_per_task": 2, "count": 3}}, r"count does not apply to kind 'blocks'")
    check({"tasks": {"kind": "rotated", "angles": [0, 90], "max_angle": 90}}, r"give angles or max_angle, not both")
    check({"tasks": {"kind": "rotated", "count": 3, "angles": [0, 90]}}, r"count: 3, but angles lists 2 angles")
    check({"tasks": {"kind": "rotated", "count": 3, "max_angle": 400}}, r"data.tasks.max_angle: Input should be")
    check({"tasks": {"kind": "permuted", "count": 3, "shuffle": True}}, r"unknown key 'data.tasks.shuffle'")
    check({"tasks": {"kind": "permuted", "count": 3}, "pretrain_set": False}, r"data: pretrain_set: permuted tasks")
    check({"tasks": {"kind": "rotated", "count": 3}}, r"incremental.augment: rotated tasks", inc={})
    cfg = validate(schema, {"data": {"tasks": {"kind": "rotated", "count": 4, "max_angle": 180}},
                            "incremental": {"augment": False}})
    assert cfg.data.tasks.split_options() == {"count": 4, "max_angle": 180.0}
    assert validate(schema, resolved(cfg)) == cfg  # a saved config reads back as it was


def test_configs_of_other_kinds_hash_as_before():
    """The family keys are opt-in: configs written before them resolve without them (hashes computed by the code
    before this change)."""
    assert "count" not in resolved(TasksConfig()) and "angles" not in resolved(TasksConfig(kind="blocks"))
    assert config_hash(resolved(DataConfig())) == "934934d8109e0368"
    assert config_hash(resolved(DataConfig(tasks={"kind": "blocks", "classes_per_task": 2}))) == "72ae14c73e39cb9a"


def test_the_command_line(tmp_path, capsys):
    out = tmp_path / "data"
    assert nws(["data", "prepare", "digits", "--out", str(out), "--format", "wds", "--tasks", "rotated",
                      "--angles", "0,45", "--quiet"]) == 0
    assert "view of pretrain" in capsys.readouterr().out
    assert [t.transform["degrees"] for t in load_tasks(out / "tasks.json")[0]] == [0, 45]
    assert nws(["data", "prepare", "digits", "--out", str(out), "--tasks", "blocks", "--count", "3"]) == 2
    assert "--count is for --tasks permuted or rotated" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: digits, tasks: {kind: permuted, count: 2}}\nincremental: {augment: false}\n")
    assert nws(["data", "prepare", "-c", str(config), "--out", str(out), "--count", "3"]) == 2
    assert "--count: with -c the config's data section says these" in capsys.readouterr().err
