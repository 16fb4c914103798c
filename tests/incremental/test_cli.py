"""`nws incremental` and `python -m pipeline incremental`: the same code, config + overrides, clear errors, exit
codes."""

import json
import re

import yaml

from incremental.chance import LEGEND
from pipeline.cli import build_parser
from pipeline.cli import main as nws
from tests.incremental.fixtures import DATA, MODEL


def write_config(path, **incremental):
    inc = {"epochs": 1, "batch_size": 32, "lr": 0.05, "milestones": [], "track": False, "num_tasks": 2,
           **incremental}
    path.write_text(yaml.safe_dump({"name": "clitest", "data": DATA, "model": MODEL, "incremental": inc}))
    return path


def test_nws_incremental_subcommand_is_registered():
    args = build_parser().parse_args(["incremental", "-c", "x.yaml", "--method", "nws", "--method", "finetune",
                                      "incremental.epochs=3"])
    assert args.method == ["nws", "finetune"] and args.overrides == ["incremental.epochs=3"]


def test_cli_runs_a_method_with_overrides(digits, pretrained, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    rc = nws(["incremental", "-c", str(cfg), "--method", "finetune", "--data", str(digits),
              "--pretrain", str(pretrained), "--out", str(tmp_path / "out"), "--strict", "incremental.num_tasks=1",
              "incremental.epochs=2", "incremental.milestones=[1]", "incremental.augment=false"])
    # --strict: a healthy run passes (96-100% over seeds 0-2, above chance from 65.3% on; one epoch of 9 steps with
    # augmentation leaves Finetune at 50.0%, and two at 60-78%: at or near chance)
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert doc["tasks"] == ["task00"] and doc["epochs"] == 2
    captured = capsys.readouterr()
    assert "finetune: final average accuracy" in captured.out
    # progress: the task among all, the epoch, the rounded loss and the epoch's training accuracy
    assert re.search(r"task 0 \(1/1\) epoch 2/2: loss \d+\.\d{4}, train acc \d+\.\d%, \d+ steps", captured.out)
    row = next(line for line in captured.out.splitlines() if line.startswith("finetune "))
    assert row.split()[1:] == [f"{100 * doc['acc_matrix'][0][0]:.1f}", f"{100 * doc['final_avg_acc']:.1f}",
                               f"{doc['memory_mib']['total']:.3f}", f"{doc['memory_coded_mib']['total']:.3f}"]
    assert LEGEND not in captured.out and "WARNING" not in captured.err


def test_a_task_at_chance_is_marked_and_fails_with_strict(digits, pretrained, tmp_path, capsys, monkeypatch):
    """The Sabotaged finetune of test_loop (its stored head predicts one class) through the command line: the table
    marks both tasks, stderr names them, and --strict exits with 6 after everything is written."""
    import incremental.methods as methods_module
    from tests.incremental.test_loop import Sabotaged

    real_get = methods_module.get_method
    monkeypatch.setattr(methods_module, "get_method", lambda name: Sabotaged if name == "finetune" else real_get(name))
    cfg = write_config(tmp_path / "c.yaml", max_steps_per_epoch=2)
    args = ["incremental", "-c", str(cfg), "--method", "finetune", "--data", str(digits),
            "--pretrain", str(pretrained), "--out", str(tmp_path / "out")]
    assert nws(args + ["--strict"]) == 6
    doc = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    captured = capsys.readouterr()
    marked = [f"{100 * a:.1f}*" for a in doc["acc_matrix"][-1]]
    assert next(line for line in captured.out.splitlines() if line.startswith("finetune ")).split()[1:3] == marked
    assert LEGEND in captured.out
    for task in ("task00", "task01"):
        assert f"WARNING: finetune {task}: " in captured.err
    assert "--strict exits with 6" in captured.err
    assert nws(args) == 0  # without --strict: marked and warned only (the finished run is not redone)
    captured = capsys.readouterr()
    assert LEGEND in captured.out and "WARNING: finetune task01: " in captured.err


def test_cli_errors_are_clear(digits, pretrained, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    assert nws(["incremental", "-c", str(cfg), "incremental.epoch=2"]) == 2
    assert "unknown key 'incremental.epoch'" in capsys.readouterr().err
    assert nws(["incremental", "-c", str(cfg), "--method", "nope", "--data", str(digits),
                "--pretrain", str(pretrained), "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert nws(["incremental", "-c", str(cfg), "--method", "nws", "--data", str(digits),
                "--pretrain", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "pools.safetensors: file not found; run `nws pretrain`" in capsys.readouterr().err


def test_two_processes_under_a_launcher(digits, pretrained, tmp_path):
    """`torchrun --nproc_per_node 2 -m pipeline incremental` (what `accelerate launch` does per node): gloo on the
    CPU, the global batch split over the ranks, rank 0 writing; every stored task evaluated over both ranks'
    shares."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = write_config(tmp_path / "c.yaml", epochs=2, milestones=[1], num_tasks=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pipeline", "incremental",
           "-c", str(cfg), "--method", "nws", "--data", str(digits), "--pretrain", str(pretrained), "--out",
           str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("stored and evaluated") == 2  # rank 0 logs, the other rank computes silently
    doc = json.loads((tmp_path / "out" / "nws" / "metrics.json").read_text())
    assert doc["world_size"] == 2 and doc["final_avg_acc"] > 0.6  # chance is 0.5
