"""The end of a Slurm submission's MLflow parent run: the report job runs `python -m cluster.parent end`.

`nws cluster submit` opens the parent run of runs/<name> (pipeline.slurm.open_parent) and exports its id and the
tracking URI in every job script (NWS_MLFLOW_PARENT_RUN_ID, MLFLOW_TRACKING_URI); the last job marks it terminated
here, with MLflow alone: ending it needs nothing of the pipeline.
"""

from __future__ import annotations

import os
import sys

from base.tracking import PARENT_ENV


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
