"""The pipeline's own side of MLflow: attaching to a run another process owns (its parent run, seen from a Slurm job
or from `nws report`). What every stage needs (start_run, the store, the environment the pipeline hands down) is
base.tracking's."""

from __future__ import annotations

from pathlib import Path

from base.tracking import DEFAULT_RUNS_DIR, AttachedRun, Run, open_client, store_path, tracking_uri


def attach_run(run_id: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Run:
    c = open_client(runs_dir)
    c.get_run(run_id)  # fails clearly when the store does not have it
    return AttachedRun(c, run_id, store_path(tracking_uri(runs_dir)))
