"""The task loop end to end on digits (5 tasks of 2 classes): NWS and Finetune, metrics.json, resume after an
interruption mid-task, and the guarantee that every accuracy comes from a model rebuilt from stored files."""

import json

import pytest
import torch

import incremental.evaluate as evaluate_module
import incremental.methods as methods_module
import nws
from base.layout import BASE_MODEL
from incremental.loop import run
from incremental.methods.finetune import NETWORK, Finetune
from nws.artifact import INDICES, ArtifactError
from nws.io import load_tensors, save_tensors
from tests import margin
from tests.incremental.fixtures import make_config
from tests.incremental.test_nws_storage import stored

KEYS = {"method", "tasks", "acc_matrix", "final_avg_acc", "avg_incremental_acc", "forgetting", "bwt",
        "memory_bytes", "train_seconds"}


def test_nws_and_finetune_end_to_end(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=3)
    results = run(cfg, digits, pretrained, tmp_path / "out", methods=["nws", "finetune"])
    for name in ("nws", "finetune"):
        doc = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert KEYS <= set(doc) and doc == json.loads(json.dumps(results[name]))
        assert doc["method"] == name and doc["tasks"] == ["task00", "task01", "task02"]
        R = doc["acc_matrix"]
        assert [len(r) for r in R] == [3, 3, 3] and R[0][1] is None and R[2][0] is not None
        # 2-way digit tasks, chance 0.5; measured 0.91-0.99 (NWS) and 0.98-1.0 (Finetune) over seeds 0-2
        margin.above(f"{name} final avg acc", doc["final_avg_acc"], 0.7)
        assert doc["forgetting"] == 0.0 and doc["bwt"] == 0.0  # every task has its own stored model
        sizes = {p: p.stat().st_size for p in (tmp_path / "out" / name).rglob("*")
                 if p.is_file() and p.parent.name.startswith("task") and "coded" not in p.parts}
        mem = doc["memory_bytes"]
        assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
        shared = mem.get("pools", 0) + mem.get("base_indices", 0)  # NWS: stored once in the method folder
        assert mem["total"] - shared == sum(sizes.values())  # every stored task file, counted once
        assert len(doc["train_seconds_per_task"]) == 3 and doc["train_seconds"] > 0
    # the search moved kernels: task 0's stored indices differ from the base model's it started from (without the
    # straight-through gradient the temporary kernels never move and no index changes: 0)
    chain, _ = stored(tmp_path / "out")
    base = nws.codec.decode((pretrained / BASE_MODEL / INDICES).read_bytes())
    same = [k for k in chain[0][1] if base[k].shape == chain[0][1][k].shape]
    moved = sum(int((chain[0][1][k] != base[k]).sum()) for k in same) / sum(base[k].numel() for k in same)
    margin.above("share of task 0's kernels moved from the base model", moved, 0.0)  # measured 0.022 (seed 0)
    nws_doc, ft_doc = results["nws"], results["finetune"]
    assert set(nws_doc["memory_bytes"]) == {"total", "pools", "base_indices", "indices", "state", "metadata"}
    assert nws_doc["memory_bytes"]["pools"] == (pretrained / "pools.safetensors").stat().st_size
    assert nws_doc["memory_bytes"]["base_indices"] == (pretrained / "base_model" / "indices.bin").stat().st_size
    margin.below("nws / finetune memory", nws_doc["memory_bytes"]["total"] / ft_doc["memory_bytes"]["total"], 0.2)
    assert len(nws_doc["kernels_per_task"]) == 3 and nws_doc["bits_per_kernel"] < 8
    assert set(nws_doc["kur"]) == set(nws_doc["layers"]) and all(len(v) == 3 for v in nws_doc["kur"].values())
    hist = load_tensors(tmp_path / "out" / "nws" / nws_doc["index_histograms"][2])
    assert sum(int(h.sum()) for h in hist.values()) == nws_doc["kernels_per_task"][2]
    assert not (tmp_path / "out" / "nws" / "checkpoints").exists()  # removed once the tasks are sealed


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_mid_task(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=2)
    calls = []

    def stop_in_task_1(t, epoch):
        calls.append((t, epoch))
        if (t, epoch) == (1, 0):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cfg, digits, pretrained, tmp_path / "a", methods=["nws"], on_epoch_end=stop_in_task_1)
    assert calls == [(0, 0), (0, 1), (1, 0)]
    assert (tmp_path / "a" / "nws" / "checkpoints" / "task01" / "latest.json").is_file()
    first_task0 = (tmp_path / "a" / "nws" / "task00" / "indices.bin").stat().st_mtime_ns
    calls.clear()
    resumed = run(cfg, digits, pretrained, tmp_path / "a", methods=["nws"], on_epoch_end=stop_in_task_1)["nws"]
    assert calls == [(1, 1)]  # task 0 not redone, task 1 continued after its last finished epoch
    assert (tmp_path / "a" / "nws" / "task00" / "indices.bin").stat().st_mtime_ns == first_task0
    straight = run(cfg, digits, pretrained, tmp_path / "b", methods=["nws"])["nws"]
    for folder in ("task00", "task01"):  # the same bytes as a run that was never interrupted
        for name in ("indices.bin", "state.safetensors"):
            assert (tmp_path / "a" / "nws" / folder / name).read_bytes() == \
                   (tmp_path / "b" / "nws" / folder / name).read_bytes()
    assert resumed["acc_matrix"] == straight["acc_matrix"]
    calls.clear()
    run(cfg, digits, pretrained, tmp_path / "a", methods=["nws"], on_epoch_end=stop_in_task_1)
    assert calls == []  # a finished run does nothing again


class Sabotaged(Finetune):
    """Stores its head zeroed while the trained model in memory is fine."""

    def write_artifact(self, model, t, folder):
        super().write_artifact(model, t, folder)
        state = load_tensors(folder / NETWORK)
        state["fc.weight"] = torch.zeros_like(state["fc.weight"])
        save_tensors(folder / NETWORK, state)


def test_accuracy_is_only_ever_measured_on_rebuilt_models(digits, pretrained, tmp_path, monkeypatch):
    rebuilt, measured = set(), []
    real_rebuild, real_accuracy = Finetune.rebuild, evaluate_module.accuracy

    def tracking_rebuild(self, t, folder, verified=False):
        model = real_rebuild(self, t, folder, verified)
        rebuilt.add(id(model))
        return model

    def checking_accuracy(model, loader, accelerator):
        measured.append(id(model) in rebuilt)
        return real_accuracy(model, loader, accelerator)

    monkeypatch.setattr(Finetune, "rebuild", tracking_rebuild)
    monkeypatch.setattr(evaluate_module, "accuracy", checking_accuracy)
    cfg = make_config(num_tasks=2)
    honest = run(cfg, digits, pretrained, tmp_path / "h", methods=["finetune"])["finetune"]
    assert measured == [True] * 3  # R[0][0], R[1][0], R[1][1]: each on a model rebuild() returned

    # The stored head is zero: every logit is 0 and argmax says class 0, so the measured accuracy must be the
    # share of class 0 in the test split, whatever the trained model in memory could do.
    real_get = methods_module.get_method
    monkeypatch.setattr(methods_module, "get_method", lambda name: Sabotaged if name == "finetune" else real_get(name))
    sabotaged = run(cfg, digits, pretrained, tmp_path / "s", methods=["finetune"])["finetune"]
    from loaders import make_loader
    for t, task in enumerate(("task00", "task01")):
        labels = torch.cat([y for _, y in make_loader(digits / task, "test", "memory", batch_size=500)])
        assert sabotaged["acc_matrix"][1][t] == pytest.approx(float((labels == 0).double().mean()))
        margin.above("honest finetune accuracy", honest["acc_matrix"][1][t], 0.8)  # the sabotaged one: about 0.5


def test_incremental_source_computes_accuracy_only_in_evaluate():
    """Structural half of the guarantee: no other module of the stage calls a model for an accuracy."""
    from pathlib import Path

    import incremental
    root = Path(incremental.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if "accuracy(" in p.read_text() and not p.name.startswith("evaluate"))
    assert users == [], f"accuracy computed outside incremental/evaluate*.py: {users}"
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "evaluate_stored(" in p.read_text())
    assert callers == ["evaluate.py", "loop.py"]


def test_a_corrupted_earlier_task_stops_the_next_row(digits, pretrained, tmp_path):
    run(make_config(num_tasks=1), digits, pretrained, tmp_path / "o", methods=["nws"])
    path = tmp_path / "o" / "nws" / "task00" / "state.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="task00/state.safetensors: checksum mismatch"):
        run(make_config(num_tasks=2), digits, pretrained, tmp_path / "o", methods=["nws"])


def test_another_configuration_in_the_same_folder_is_refused(digits, pretrained, tmp_path):
    run(make_config(num_tasks=1), digits, pretrained, tmp_path / "o", methods=["finetune"])
    with pytest.raises(ValueError, match="another configuration"):
        run(make_config(num_tasks=1, lr=0.2), digits, pretrained, tmp_path / "o", methods=["finetune"])


def test_a_method_at_chance_is_flagged_in_metrics_stderr_and_mlflow(digits, pretrained, tmp_path, monkeypatch,
                                                                   capsys):
    """Sabotaged's stored head predicts one class: its accuracy is that class's share, chance on two balanced
    classes. metrics.json carries each task's test-set size and class count and the flagged tasks, stderr names
    method and task, and the method's MLflow run gets the tag chance_tasks."""
    from mlflow.tracking import MlflowClient

    from base.tracking import PARENT_ENV, tracking_uri
    from incremental.chance import binomial_p
    from loaders import make_loader
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    real_get = methods_module.get_method
    monkeypatch.setattr(methods_module, "get_method", lambda name: Sabotaged if name == "finetune" else real_get(name))
    cfg = make_config(num_tasks=2, epochs=1, milestones=[], max_steps_per_epoch=2, track=True)
    doc = run(cfg, digits, pretrained, tmp_path / "o", methods=["finetune"], runs_dir=tmp_path / "runs")["finetune"]
    err = capsys.readouterr().err
    assert doc == json.loads((tmp_path / "o" / "finetune" / "metrics.json").read_text())
    sizes = [sum(len(y) for _, y in make_loader(digits / t, "test", "memory", batch_size=500)) for t in doc["tasks"]]
    assert doc["test_samples"] == sizes and doc["task_classes"] == [2, 2]
    assert doc["chance"]["flagged"] == ["task00", "task01"]
    for t, task in enumerate(doc["tasks"]):
        acc, n = doc["acc_matrix"][1][t], sizes[t]
        assert doc["chance"]["p_values"][t] == pytest.approx(binomial_p(round(acc * n), n, 2))
        assert f"WARNING: finetune {task}: {100 * acc:.1f}% on {n} test images is not above chance (50.0%, " \
               f"binomial p=" in err
    tags = MlflowClient(tracking_uri(tmp_path / "runs")).get_run(doc["mlflow_run_id"]).data.tags
    assert tags["chance_tasks"] == "task00,task01"


def test_mlflow_child_run_per_method(digits, pretrained, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from base.tracking import PARENT_ENV, start_run, tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = start_run("t", "pipeline", runs_dir=tmp_path / "runs")
    monkeypatch.setenv(PARENT_ENV, parent.run_id)
    doc = run(make_config(num_tasks=2, track=True), digits, pretrained, tmp_path / "o", methods=["finetune"],
              runs_dir=tmp_path / "runs")["finetune"]
    client = MlflowClient(tracking_uri(tmp_path / "runs"))
    child = client.get_run(doc["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id and child.data.tags["method"] == "finetune"
    assert child.data.params["incremental.lr"] == "0.05"
    history = client.get_metric_history(child.info.run_id, "acc_new_task")
    assert [(m.step, m.value) for m in history] == [(t + 1, doc["acc_matrix"][t][t]) for t in range(2)]  # tasks learned
    assert child.data.metrics["final_avg_acc"] == pytest.approx(doc["final_avg_acc"])
    paths = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"metrics.json", "task00", "task01"} <= paths
    # a healthy run: nothing at chance, an empty tag, no warning
    assert doc["chance"]["flagged"] == [] and child.data.tags["chance_tasks"] == ""
    assert "WARNING" not in capsys.readouterr().err


def test_bf16_autocast_run(digits, pretrained, tmp_path):
    doc = run(make_config(num_tasks=1, precision="bf16"), digits, pretrained, tmp_path / "o", methods=["nws"])["nws"]
    assert doc["precision"] == "bf16" and doc["final_avg_acc"] > 0.75


def test_shared_pools_changed_after_tasks_were_stored_are_refused(digits, pretrained, tmp_path):
    run(make_config(num_tasks=1), digits, pretrained, tmp_path / "o", methods=["nws"])
    pools = tmp_path / "o" / "nws" / "pools.safetensors"
    data = bytearray(pools.read_bytes())
    data[-5] ^= 0x01
    pools.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="nws/pools.safetensors: checksum mismatch"):
        run(make_config(num_tasks=2), digits, pretrained, tmp_path / "o", methods=["nws"])


def test_non_finite_losses_stop_the_task_naming_where(digits, pretrained, tmp_path, capsys):
    """Issue 17: the task loop's non-finite guard named no layer. An lr of 1e8 blows Finetune's weights up on the
    first step; the next steps are skipped, each log line and the final error naming the first parameter that holds
    NaN/inf, and nothing is stored for the task."""
    from base.training import NonFiniteLoss

    cfg = make_config(num_tasks=1, lr=1e8, max_consecutive_skips=3)
    with pytest.raises(NonFiniteLoss, match=r"task 0: 3 non-finite losses in a row at epoch \d+: \S+ holds NaN/inf"):
        run(cfg, digits, pretrained, tmp_path / "o", methods=["finetune"])
    out = capsys.readouterr().out
    assert out.count("holds NaN/inf), step skipped") >= 3
    assert not (tmp_path / "o" / "finetune" / "task00" / "stored.json").exists()


def test_task_folders_are_named_once_and_old_runs_keep_theirs(tmp_path):
    """Issue 19: every task folder was `task00_task00` (the index and the data stage's default name twice). A task
    named `taskNN` now gets `taskNN/`, a task with a name of its own `taskNN_<name>/`; a run made before keeps its
    `task00_task00/` (found, so it resumes with its stored tasks)."""
    from data_prep.tasks import Task
    from incremental.methods import Context

    tasks = [Task("task00", ["0", "1"], [0, 1]), Task("low", ["2", "3"], [2, 3])]
    ctx = Context(cfg=None, data_dir=tmp_path, pretrain_dir=tmp_path, method_dir=tmp_path / "m", tasks=tasks,
                  options=None)
    assert ctx.task_dir(0) == tmp_path / "m" / "task00" and ctx.task_dir(1) == tmp_path / "m" / "task01_low"
    (tmp_path / "m" / "task00_task00").mkdir(parents=True)
    assert ctx.task_dir(0) == tmp_path / "m" / "task00_task00"
