"""The pipeline on Slurm: what `nws cluster submit` decides before the cluster library (cluster/) renders and
submits the jobs, and the MLflow parent run they log under.

The package `cluster` knows Slurm (scripts, sbatch, states) and nothing of the pipeline; the jobs it renders run
`nws pipeline run --only STAGE` commands. What needs the pipeline is here: the folder rule (pipeline.layout: another
config than the folder's is refused at submission, not in the jobs) and the parent run of runs/<name>, opened the
way `nws pipeline run` opens it (pipeline.runner.parent_run: the run named in runs/<name>/pipeline.json is
reopened, else a new one is created and named there), so a submission submitted again, or a later local run, keeps
one parent. Its id and the tracking URI are exported in every job script (NWS_MLFLOW_PARENT_RUN_ID,
MLFLOW_TRACKING_URI): the jobs, on any node, attach to it and open their stage runs as its children in the same
store. The report job ends it (`python -m cluster.parent end`).
"""

from __future__ import annotations

import os
from pathlib import Path

from base.tracking import PARENT_ENV, tracking_uri


def open_parent(cfg, runs_dir: Path, stamp: str, uri: str | None = None,
                variant: str | None = None) -> tuple[str, str]:
    """The parent run of runs/<cfg.name> (or of its variant's folder), tagged with this submission, in the store at
    `uri` (default: the usual one, pipeline.tracking.tracking_uri); returns (run id, tracking URI)."""
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


def submit(cfg, sub, tracking: str | None) -> list:
    """Check and submit the jobs of `sub` (cluster.render.Submission, rendered with a placeholder parent run) of
    the experiment config `cfg`, logging to the store `tracking` (None: the usual one): the folder's config first
    (unless `sub.replace`), then Slurm validates every request, and only then the parent run is opened and the jobs
    are queued, chained and recorded. A failure after the parent run exists marks it FAILED. Returns the (job, job
    id) pairs."""
    from base.layout import Layout
    from cluster.parent import end_parent
    from cluster.render import render
    from cluster.submit import SubmitError, check, record, submit_jobs
    from pipeline.layout import check_folder, seed_config

    if not sub.replace:  # another config than the folder's fails here, not in the jobs (pipeline.layout)
        layout = Layout(sub.runs_dir, sub.name, sub.variant)
        for seed in sub.seeds:
            check_folder(layout, seed_config(cfg, seed)[1])
    check(render(sub))  # Slurm validates every request before the parent run exists or a job is queued
    parent, uri = open_parent(cfg, sub.runs_dir, sub.stamp, tracking, sub.variant)
    try:
        sub.parent_run_id, sub.tracking_uri = parent, uri
        submitted = submit_jobs(render(sub))
        record(sub, submitted)
    except (SubmitError, FileNotFoundError, KeyError, ValueError):
        end_parent("FAILED", parent, uri)
        raise
    return submitted
