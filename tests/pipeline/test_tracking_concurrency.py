"""Several processes writing to one fresh SQLite MLflow store at once (seeds, stages and Slurm jobs that start
together): none fails, and every metric point of every run is stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys
from base.tracking import start_run
with start_run("together", f"writer{sys.argv[2]}", runs_dir=sys.argv[1], tags={"writer": sys.argv[2]}) as run:
    for step in range(40):
        run.log_metrics({"loss": 1.0 / (step + 1), "step_seen": step}, step=step)
"""


def test_concurrent_writers_on_a_fresh_store(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(i)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.data.tags["writer"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "step_seen")
        assert sorted(m.step for m in history) == list(range(40))
