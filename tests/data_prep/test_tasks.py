"""Task splits on real sources: the Split-CIFAR-100 superclass tasks, CUB-to-Sketches, blocks, SupSup's random
split, explicit lists, the all-classes pretraining set, and tasks.json round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.sources import open_source
from data_prep.tasks import Task, load_tasks, save_tasks, split_tasks, task_records
from data_prep.types import Source, Split
from tests.data_prep import fixtures as fx

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Source:
    return open_source("cifar100", root=fx.write_cifar100_tarball(tmp_path_factory.mktemp("cifar")))


def fake_source(n: int, name: str = "fake") -> Source:
    labels = np.arange(3 * n) % n
    return Source(name=name, classes=[f"c{i}" for i in range(n)],
                  splits={"train": Split(labels=labels, load=lambda i: None)})


def test_cifar100_superclass_split_is_the_paper_order_with_alphabetical_labels(cifar):
    tasks = split_tasks(cifar, "group")  # order defaults to alphabetical for cifar100
    assert [t.name for t in tasks] == sorted(fx.CIFAR_COARSE) == fx.CIFAR_COARSE
    assert tasks[0].class_names == ["beaver", "dolphin", "otter", "seal", "whale"]
    assert tasks[0].class_ids == [4, 30, 55, 72, 95]
    assert tasks[-1].name == "vehicles_2"
    assert tasks[-1].class_names == ["lawn_mower", "rocket", "streetcar", "tank", "tractor"]
    for t, task in enumerate(tasks):
        truth = [f for f in range(100) if fx.CIFAR_FINE_TO_COARSE[f] == t]
        assert sorted(task.class_ids) == truth
        assert task.class_names == sorted(task.class_names)
        assert [task.remap(c) for c in task.class_ids] == [0, 1, 2, 3, 4]
    for split in cifar.splits.values():
        parts = [task_records(split, task) for task in tasks]
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(split)))
        for task, idx in zip(tasks, parts, strict=True):
            assert set(split.labels[idx].tolist()) == set(task.class_ids)
            assert len(idx) == 5 * len(split) // 100
    assert split_tasks(cifar, "group", order="alphabetical") == tasks


def test_group_order_source_is_first_seen_by_class_id(cifar):
    tasks = split_tasks(cifar, "group", order="source")
    assert [t.name for t in tasks[:3]] == ["fruit_and_vegetables", "fish", "people"]
    assert tasks[0].class_ids == [0, 51, 53, 57, 83]
    with pytest.raises(ValueError, match="group order 'random'"):
        split_tasks(cifar, "group", order="random")


def test_cub2sketches_group_split_is_one_task_per_dataset_in_paper_order(tmp_path):
    src = open_source("cub2sketches", root=fx.write_cub2sketches(tmp_path, classes_per_dataset=3))
    tasks = split_tasks(src, "group")
    assert [t.name for t in tasks] == list(fx.CUB2SKETCHES)
    assert tasks[1].class_ids == [3, 4, 5]
    assert tasks[1].class_names[0] == "stanford_cars_cropped/001.stanford_cars_cropped_class_0"
    idx = task_records(src.splits["test"], tasks[4])
    assert [src.splits["test"].load(int(i)).key.split("/")[0] for i in idx] == ["sketches"] * 3


def test_blocks_consecutive_class_ids(cifar):
    tasks = split_tasks(cifar, "blocks", num_tasks=10)
    assert [t.name for t in tasks] == [f"task{t:02d}" for t in range(10)]
    assert tasks[3].class_ids == list(range(30, 40)) and tasks[3].class_names[0] == fx.CIFAR_FINE[30]
    assert split_tasks(cifar, "blocks", classes_per_task=10) == tasks
    assert len(split_tasks(cifar, "blocks", classes_per_task=5)) == 20
    with pytest.raises(ValueError, match="100 classes cannot be split into 3 classes per task"):
        split_tasks(cifar, "blocks", classes_per_task=3)
    with pytest.raises(ValueError, match="100 classes cannot be split into 7 tasks"):
        split_tasks(cifar, "blocks", num_tasks=7)
    with pytest.raises(ValueError, match="exactly one of classes_per_task and num_tasks"):
        split_tasks(cifar, "blocks", num_tasks=10, classes_per_task=10)


def test_random_split_is_supsup_permutation_then_blocks(cifar):
    tasks = split_tasks(cifar, "random", classes_per_task=5, seed=1)
    perm = np.random.RandomState(1).permutation(100)
    assert [c for t in tasks for c in t.class_ids] == perm.tolist()
    assert tasks[2].remap(int(perm[12])) == 2
    assert split_tasks(cifar, "random", classes_per_task=5, seed=1) == tasks
    assert split_tasks(cifar, "random", classes_per_task=5, seed=2) != tasks


def test_explicit_names_ids_and_named_entries(cifar):
    tasks = split_tasks(cifar, "explicit", explicit=[["whale", "apple"], [3, 4],
                                                     {"name": "bugs", "classes": ["bee", "beetle"]}])
    assert [t.name for t in tasks] == ["task00", "task01", "bugs"]
    assert tasks[0].class_ids == [95, 0] and tasks[0].remap(0) == 1
    assert tasks[1].class_names == ["bear", "beaver"]
    with pytest.raises(ValueError, match="explicit task 'task01': unknown class name 'unicorn'"):
        split_tasks(cifar, "explicit", explicit=[["apple"], ["unicorn"]])
    with pytest.raises(ValueError, match=r"class 'apple' \(id 0\) is in two tasks: 'task00' and 'task01'"):
        split_tasks(cifar, "explicit", explicit=[["apple", "bee"], [0]])
    with pytest.raises(ValueError, match="task name 'x' used twice"):
        split_tasks(cifar, "explicit", explicit=[{"name": "x", "classes": [1]},
                                                 {"name": "x", "classes": [2]}])
    with pytest.raises(ValueError, match="class id 100 out of range 0..99"):
        split_tasks(cifar, "explicit", explicit=[[100]])


def test_explicit_string_is_a_name_even_when_it_looks_like_an_id():
    digits = open_source("digits")
    tasks = split_tasks(digits, "explicit", explicit=[["3", 0]])
    assert tasks[0].class_ids == [3, 0] and tasks[0].class_names == ["3", "0"]


def test_all_is_one_task_with_every_class_and_names_are_checked(cifar):
    (task,) = split_tasks(cifar, "all")
    assert task.name == "all" and task.class_ids == list(range(100)) and task.num_classes == 100
    assert split_tasks(cifar, "all", name="pretrain")[0].name == "pretrain"
    with pytest.raises(ValueError, match="unknown task split kind 'superclass'; known kinds: group, blocks"):
        split_tasks(cifar, "superclass")
    with pytest.raises(ValueError, match=r"task split 'group' does not take \['classes_per_task'\]"):
        split_tasks(cifar, "group", classes_per_task=5)
    with pytest.raises(ValueError, match="source 'fake' defines no class groups"):
        split_tasks(fake_source(4), "group")


def test_task_remap_and_dict_round_trip():
    task = Task("t", ["b", "a", "c"], [7, 2, 9])
    assert [task.remap(c) for c in (7, 2, 9)] == [0, 1, 2]
    assert task.remap_labels(np.array([9, 9, 2, 7])).tolist() == [2, 2, 1, 0]
    with pytest.raises(ValueError, match=r"class 3 is not in task 't' \(classes \[7, 2, 9\]\)"):
        task.remap(3)
    with pytest.raises(ValueError, match="class 12 is not in task 't'"):
        task.remap_labels(np.array([7, 12]))
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    with pytest.raises(ValueError, match="2 class ids but 1 class names"):
        Task("u", ["a"], [1, 2])
    with pytest.raises(ValueError, match="a class appears twice"):
        Task("u", ["a", "b"], [1, 1])


def test_save_and_load_tasks(tmp_path, cifar):
    tasks = split_tasks(cifar, "group")
    path = save_tasks(tmp_path / "out" / "tasks.json", tasks, {"source": "cifar100", "kind": "group"})
    loaded, meta = load_tasks(path)
    assert loaded == tasks and meta == {"source": "cifar100", "kind": "group"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "tasks.json"]  # no temp file left
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"tasks.json: tasks.json version 99, expected 1"):
        load_tasks(path)
    path.write_text(json.dumps({"version": 1, "tasks": [{"name": "a", "class_ids": [1]}]}))
    with pytest.raises(ValueError, match=r"tasks.json: task entry .* lacks keys \['class_names'\]"):
        load_tasks(path)


def test_task_records_reads_only_labels(cifar):
    split = cifar.splits["train"]
    calls = []
    spy = Split(labels=split.labels, load=lambda i: calls.append(i))
    task = split_tasks(cifar, "group")[3]
    idx = task_records(spy, task)
    assert calls == [] and idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, np.flatnonzero(np.isin(split.labels, task.class_ids)))


def test_fashion_mnist_five_two_class_tasks_plus_the_pretraining_set():
    src = open_source("fashion_mnist")
    tasks = split_tasks(src, "blocks", classes_per_task=2)
    assert [t.class_names for t in tasks] == [["T-shirt/top", "Trouser"], ["Pullover", "Dress"],
                                              ["Coat", "Sandal"], ["Shirt", "Sneaker"], ["Bag", "Ankle boot"]]
    for task in tasks:
        train, test = (task_records(src.splits[s], task) for s in ("train", "test"))
        assert (len(train), len(test)) == (12_000, 2_000)
        remapped = task.remap_labels(src.splits["train"].labels[train])
        assert np.bincount(remapped).tolist() == [6_000, 6_000]
    (pretrain,) = split_tasks(src, "all", name="pretrain")
    assert pretrain.num_classes == 10
    assert len(task_records(src.splits["train"], pretrain)) == 60_000
    assert len(task_records(src.splits["test"], pretrain)) == 10_000
