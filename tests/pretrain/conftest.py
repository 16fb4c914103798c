"""Shared fixtures of the pretrain tests: prepared digits, tiny configs, an in-process 1-rank group, and a helper
that runs the real command line (one process, or 2 CPU ranks under torchrun) against a temporary MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SEED, THREADS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
# a ResNet-18 NWS variant small enough for seconds-long runs; 32x32 keeps every feature map above 1x1
TINY = ["model.width=0.125", "model.pool_size=16", "data.image_size=32", "pretrain.batch_size=32",
        "pretrain.epochs=1", "pretrain.max_steps_per_epoch=4", "pretrain.log_every=1", "pretrain.kind=nws",
        "pretrain.eval_batch_size=512", "pretrain.checkpoint_every=0", f"pretrain.threads={THREADS}",
        "pretrain.precision=bf16",  # the paper's precision, whatever the demo config resolves to on this machine
        f"seeds=[{SEED}]"]


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """The digits source prepared by the data stage (5 two-class tasks + the all-classes `pretrain` unit)."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("digits")
    prepare("digits", None, out, formats=("wds",), task_kind="blocks", task_opts={"classes_per_task": 2},
            progress=False)
    return out


def experiment(*overrides: str):
    from base.config import load_config
    from pipeline.config import experiment_schema

    return load_config(experiment_schema(), DEMO, [*TINY, *overrides])


@pytest.fixture(scope="module")
def one_rank():
    """A 1-rank gloo group in this process (what `python -m pipeline pretrain` makes for itself), torn down afterwards
    so no rendezvous variable leaks into other tests."""
    import torch.distributed as dist

    from pretrain.launch import DIST_VARS, init_distributed

    saved = {k: os.environ.get(k) for k in (*DIST_VARS, "DS_ACCELERATOR")}
    init_distributed()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    import deepspeed.comm.comm as ds_comm

    ds_comm.cdb = None  # DeepSpeed's handle on the destroyed group
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_job(cfg, data: Path, out: Path):
    from base.config import config_hash, resolved
    from pretrain.data import num_classes
    from pretrain.loop import Job

    return Job(cfg=cfg, data_dir=data, out_dir=out, num_classes=num_classes(data), config_hash=config_hash(cfg),
               resolved=resolved(cfg))


def cli_env(tmp: Path) -> dict[str, str]:
    from pretrain.launch import DIST_VARS

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", OMP_NUM_THREADS=str(THREADS), DS_ACCELERATOR="cpu",
               PYTHONPATH=str(ROOT))
    return env


def pretrain_command(data: Path, out: Path, *overrides: str, ranks: int = 1, config: Path = DEMO,
                     tiny: bool = True) -> list[str]:
    """`python -m pipeline pretrain ...`, under torchrun (gloo, CPU) for several ranks; TINY settings unless
    `tiny=False`."""
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={ranks}"]
    return [*launch, "-m", "pipeline", "pretrain", "-c", str(config), "--data", str(data), "--out", str(out),
            *(TINY if tiny else []), *overrides]


def run_pretrain(tmp: Path, data: Path, out: Path, *overrides: str, ranks: int = 1, config: Path = DEMO,
                 tiny: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_command(data, out, *overrides, ranks=ranks, config=config, tiny=tiny), cwd=ROOT,
                          env=cli_env(tmp), capture_output=True, text=True, timeout=timeout)
