"""Each method run's own figures in its MLflow child run (issue 19).

The report draws its figures over all seeds and logs them to the pipeline's parent run; a researcher who opens one
method's run (one seed) in the UI finds that run's figures there too, under `plots/`: its accuracy matrix, task-wise
accuracies and memory against the number of tasks, and for NWS Fig. 4's heatmaps and the index distributions. They
are drawn by the report's own `draw` (pipeline.report hands it over: this module sits below the report) from that
run's metrics.json alone, so with one seed they are the report's figures. The child run is the one the method
folder's mlflow_run.json names (written by the task loop); a run made without tracking has none and is left out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from base.layout import PLOTS, RUN_FILE
from nws.io import read_json


def child_run_id(metrics_path: Path) -> str | None:
    """The MLflow run of the method folder holding `metrics_path` (None: the loop ran without tracking)."""
    path = metrics_path.parent / RUN_FILE
    return read_json(path).get("run_id") if path.is_file() else None


def log_method_plots(tracker, found: dict, tasks: list[str], labels: list[str], model: dict | None,
                     draw: Callable[..., list[Path]]) -> dict[str, list[str]]:
    """Draw every method run's figures (the report's `draw` on that run alone, tasks shown by `labels`) and log
    them to its child run, a run of `tracker`'s store; returns {child run id: the file names logged}."""
    logged = {}
    for name, runs in found.items():
        for run in runs:
            run_id = child_run_id(run.path)
            child = tracker.other(run_id) if run_id else None
            if child is None or child.run_id is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                one = {"tasks": tasks, "task_labels": labels, "methods": {name: run.doc}}
                drawn = draw(one, {name: [run]}, Path(tmp), model)
                for path in drawn:
                    child.log_artifact(path, artifact_path=PLOTS)
            logged[child.run_id] = [p.name for p in drawn]
    return logged
