"""`nws incremental` and `python -m incremental`: the same code, config + overrides, clear errors, exit codes."""

import json

import yaml

from incremental.cli import main
from pipeline.cli import build_parser
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
    rc = main(["-c", str(cfg), "--method", "finetune", "--data", str(digits), "--pretrain", str(pretrained),
               "--out", str(tmp_path / "out"), "incremental.num_tasks=1"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert doc["tasks"] == ["task00"] and doc["epochs"] == 1
    assert "finetune: final average accuracy" in capsys.readouterr().out


def test_cli_errors_are_clear(digits, pretrained, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["-c", str(cfg), "incremental.epoch=2"]) == 2
    assert "unknown key 'incremental.epoch'" in capsys.readouterr().err
    assert main(["-c", str(cfg), "--method", "nope", "--data", str(digits), "--pretrain", str(pretrained),
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["-c", str(cfg), "--method", "nws", "--data", str(digits), "--pretrain", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "pools.safetensors: file not found; run `nws pretrain`" in capsys.readouterr().err


def test_two_processes_under_a_launcher(digits, pretrained, tmp_path):
    """`torchrun --nproc_per_node 2 -m incremental` (what `accelerate launch` does per node): gloo on the CPU, the
    global batch split over the ranks, rank 0 writing; every stored task evaluated over both ranks' shares."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = write_config(tmp_path / "c.yaml", epochs=2, milestones=[1], num_tasks=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "incremental", "-c",
           str(cfg), "--method", "nws", "--data", str(digits), "--pretrain", str(pretrained), "--out",
           str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("stored and evaluated") == 2  # rank 0 logs, the other rank computes silently
    doc = json.loads((tmp_path / "out" / "nws" / "metrics.json").read_text())
    assert doc["world_size"] == 2 and doc["final_avg_acc"] > 0.6  # chance is 0.5
