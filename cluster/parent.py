"""The MLflow parent run of a Slurm submission: the pipeline folder's parent run, opened at submission, ended by
the report job.

`nws cluster submit` opens the parent run of runs/<name> the way `nws pipeline run` does (pipeline.runner.parent_run:
the run named in runs/<name>/pipeline.json is reopened, else a new one is created and named there), so a submission
submitted again, or a later local run, keeps one parent. Its id and the tracking URI are exported in every job
script (NWS_MLFLOW_PARENT_RUN_ID, MLFLOW_TRACKING_URI): the jobs, on any node, attach to it and open their stage runs
as its children in the same store. The report job ends it with `python -m cluster.parent end`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from base.tracking import PARENT_ENV, tracking_uri


def open_parent(cfg, runs_dir: Path, stamp: str, uri: str | None = None,
                variant: str | None = None) -> tuple[str, str]:
    """The parent run of runs/<cfg.name> (or of its variant's folder), tagged with this submission, in the store at
    `uri` (default: the usual one, base.tracking.tracking_uri); returns (run id, tracking URI)."""
    from base.layout import Layout
    from pipeline.runner import parent_run

    # a submission opens its folder's parent, never a child of another
    saved = {key: os.environ.pop(key, None) for key in (PARENT_ENV, *(["MLFLOW_TRACKING_URI"] if uri else []))}
    try:
        if uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        layout = Layout(runs_dir, cfg.name, variant)
        layout.root.mkdir(parents=True, exist_ok=True)
        run = parent_run(cfg, layout, runs_dir)
        run.set_tags({"launcher": "slurm", "submission": stamp})
        uri = tracking_uri(runs_dir)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    return run.run_id, uri


def end_parent(status: str = "FINISHED", run_id: str | None = None, uri: str | None = None) -> str:
    """Mark the parent run terminated; run id and store default to $NWS_MLFLOW_PARENT_RUN_ID and
    $MLFLOW_TRACKING_URI (what the job scripts export). Returns the run id."""
    from mlflow.tracking import MlflowClient

    run_id, uri = run_id or os.environ.get(PARENT_ENV), uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not run_id or not uri:
        raise KeyError(f"{PARENT_ENV} and MLFLOW_TRACKING_URI must be set (the job scripts export them)")
    MlflowClient(uri).set_terminated(run_id, status)
    return run_id


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "end" or len(argv) > 2:
        print("usage: python -m cluster.parent end [FINISHED|FAILED|KILLED]", file=sys.stderr)
        return 2
    run_id = end_parent(argv[1] if len(argv) == 2 else "FINISHED")
    print(f"[cluster] MLflow parent run {run_id} ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
