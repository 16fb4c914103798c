"""Sequential fine-tuning, the forgetting lower bound: one backbone trained task after task, one head per task.
A task rebuilds from the CURRENT shared backbone and its own head, so an earlier task measurably forgets; the
backbone is staged and promoted like PackNet's shared files, so a run killed mid-task or while storing a task
resumes to the uninterrupted run's files and accuracies; FWT's measured values reach metrics.json."""

import json

import pytest
import torch

from incremental.loop import run
from incremental.methods.sequential import BACKBONE, HEAD_FILE
from nws.io import load_tensors
from tests import margin
from tests.incremental.fixtures import make_config
from tests.incremental.test_dst import Interrupt, same_content
from tests.incremental.test_methods import method_for, sample_batch, train_a_little
from tests.incremental.test_packnet import store

# 3 tasks of 27 steps at lr 0.05 (x0.1 for the last 9): measured R[2][0] = 0.625 after R[0][0] = 1.0 (digits, seed
# of tests.conftest); at the fixtures' 18 steps a task R[2][0] stayed 0.986
FORGET_CFG = {"num_tasks": 3, "epochs": 3, "max_steps_per_epoch": 9, "milestones": [2]}
FILES = (BACKBONE, *(f"task{t:02d}/{HEAD_FILE}" for t in range(3)))


@pytest.fixture(scope="module")
def uninterrupted(digits, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential_whole")
    return out, run(make_config(**FORGET_CFG), digits, pretrained, out, methods=["sequential"])["sequential"]


def test_the_first_task_rebuilt_after_the_last_has_forgotten(uninterrupted):
    out, doc = uninterrupted
    R = doc["acc_matrix"]
    margin.above("R[0][0] of sequential", R[0][0], 0.9)
    margin.below("R[2][0] of sequential", R[2][0], R[0][0] - 0.2)
    assert doc["forgetting_per_task"][0] >= R[0][0] - R[2][0] and doc["forgetting"] > 0 and doc["bwt"] < 0
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "backbone", "head", "metadata"}
    assert mem["backbone"] == (out / "sequential" / BACKBONE).stat().st_size  # one backbone, counted once
    assert mem["head"] == sum((out / "sequential" / f"task{t:02d}" / HEAD_FILE).stat().st_size for t in range(3))
    assert doc["memory_breakdown"]["head"]["head"] > 0 and doc["memory_breakdown"]["backbone"]["head"] == 0


def test_forward_transfer_reaches_metrics_json(uninterrupted):
    out, doc = uninterrupted
    before, random = doc["acc_before_learning"], doc["acc_random_init"]
    assert before[0] is None and random[0] is None and None not in before[1:] + random[1:]
    assert doc["fwt_per_task"] == [before[t] - random[t] for t in (1, 2)]
    assert doc["fwt"] == pytest.approx(sum(doc["fwt_per_task"]) / 2)
    assert json.loads((out / "sequential" / "metrics.json").read_text())["fwt"] == doc["fwt"]
    assert all(0 <= a <= 1 for a in before[1:] + random[1:])


def test_the_next_task_starts_from_the_stored_backbone_and_earlier_tasks_follow_it(digits, pretrained, tmp_path):
    m = method_for("sequential", digits, pretrained, tmp_path)
    plain = load_tensors(pretrained / "plain_backbone.safetensors")
    model = m.setup_task(0)
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    train_a_little(m, model, 0)
    store(m, model, 0)
    x = sample_batch(m, 0)
    with torch.no_grad():
        trained0 = model.eval()(x)
        assert torch.equal(trained0, m.rebuild(0, m.ctx.task_dir(0)).eval()(x))
    nxt = m.setup_task(1)
    stored = load_tensors(m.ctx.method_dir / BACKBONE)
    assert all(torch.equal(v, stored[k]) for k, v in nxt.state_dict().items() if not k.startswith("fc."))
    train_a_little(m, nxt, 1)
    store(m, nxt, 1)
    with torch.no_grad():
        again = m.rebuild(0, m.ctx.task_dir(0)).eval()(x)
        assert torch.equal(nxt.eval()(x), m.rebuild(1, m.ctx.task_dir(1)).eval()(x))
    assert not torch.allclose(again, trained0)  # task 0's head, task 1's backbone
    assert torch.equal(load_tensors(m.ctx.task_dir(0) / HEAD_FILE)["fc.weight"], model.fc.weight)


def test_a_run_killed_mid_task_resumes_identically(digits, pretrained, tmp_path, uninterrupted):
    def stop(t, epoch):
        if (t, epoch) == (1, 1):
            raise Interrupt

    cfg = make_config(**FORGET_CFG)
    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path, methods=["sequential"], on_epoch_end=stop)
    assert "before" in json.loads((tmp_path / "sequential" / "progress.json").read_text())["transfer"]["1"]
    resumed = run(cfg, digits, pretrained, tmp_path, methods=["sequential"])["sequential"]
    ref_dir, ref = uninterrupted
    for key in ("acc_matrix", "acc_before_learning", "acc_random_init", "fwt"):
        assert resumed[key] == ref[key], key
    for name in FILES:
        assert same_content(tmp_path / "sequential" / name, ref_dir / "sequential" / name), name


@pytest.mark.parametrize("point", ["before the seal", "after the seal"])
def test_a_kill_while_storing_a_task_resumes(digits, pretrained, tmp_path, monkeypatch, uninterrupted, point):
    """As PackNet's (issue 17): killed before task 1's seal (its staged backbone dropped, the task stored again from
    its last checkpoint) or after it (the staged backbone promoted on the next start), the rerun ends with the
    uninterrupted run's files and accuracies."""
    import incremental.loop as loop
    import incremental.stored as stored

    task1 = tmp_path / "sequential" / "task01"
    real = loop.seal_task if point == "before the seal" else loop.promote

    def crash(*args, **kwargs):
        if task1.exists() and (point == "before the seal" or stored.is_sealed(task1)):
            raise Interrupt(point)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "seal_task" if point == "before the seal" else "promote", crash)
    cfg = make_config(**FORGET_CFG)
    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path, methods=["sequential"])
    monkeypatch.undo()
    assert (tmp_path / "sequential" / (BACKBONE + stored.STAGED)).is_file()
    resumed = run(cfg, digits, pretrained, tmp_path, methods=["sequential"])["sequential"]
    ref_dir, ref = uninterrupted
    assert resumed["acc_matrix"] == ref["acc_matrix"] and resumed["fwt"] == ref["fwt"]
    for name in FILES:
        assert same_content(tmp_path / "sequential" / name, ref_dir / "sequential" / name), name
    assert not list((tmp_path / "sequential").glob("*" + stored.STAGED))
