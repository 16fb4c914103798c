"""A full disk under the pipeline (issue 17): the MLflow store names its SQLite file (SQLite says only "database or
disk is full"), and `nws pipeline run` exits 8 naming the file its in-process data stage was writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.tracking import start_run
from nws.disk import DiskFull
from pipeline.cli import main as nws
from tests.small_disk import small_disk

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def test_a_full_mlflow_store_is_named(tmp_path, monkeypatch):
    with small_disk(tmp_path / "disk", "1m") as disk:
        db = disk.path / "mlflow.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        run = start_run("full", "stage")
        with pytest.raises(DiskFull) as info:
            for step in range(10_000):  # about 300 bytes a metric row: the disk fills within a few thousand steps
                run.log_metrics({f"m{i}": float(i) for i in range(50)}, step=step)
        assert str(info.value).startswith(f"{db}: no space left on device")
        assert step > 0  # the store worked until the disk filled


def test_pipeline_run_names_the_file_on_a_full_disk(tmp_path, capsys):
    with small_disk(tmp_path / "disk", "3m") as disk:  # MLflow's store (about 1 MiB) and two of the five tasks
        runs = disk.path / "runs"
        assert nws(["pipeline", "run", "-c", str(DEMO), "--only", "data", "--runs-dir", str(runs)]) == 8
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"error: {runs / 'demo' / 'data'}/.task0") and ".tar: no space left on device" in error
        disk.resize("20m")
        assert nws(["pipeline", "run", "-c", str(DEMO), "--only", "data", "--runs-dir", str(runs)]) == 0
        assert (runs / "demo" / "data" / "stage.json").is_file()
