"""MLflow for every stage (DESIGN §2): one child run per stage under the pipeline's parent run, rank 0 only.

The tracking URI is MLFLOW_TRACKING_URI when set, else a SQLite file `<runs dir>/mlflow.db` (MLflow 3's default store
kind; the file store refuses to start since 3.13, notes/infrastructure.md §5), with artifacts next to it. A stage
run started in another process or Slurm job joins the pipeline's run through the parent id in
NWS_MLFLOW_PARENT_RUN_ID (tag `mlflow.parentRunId`). Ranks other than 0 get a `NullRun` that ignores everything, so
stage code logs unconditionally. Every run started or resumed here is tagged with its provenance (base.provenance:
git commit and dirty flag, host, user, command line, torch/deepspeed versions), and a stage records the data folder
it reads as an MLflow dataset input (`log_data`: the folder as source, its manifest's digest).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from base.layout import MANIFEST  # the data stage's manifest (data_prep.manifest): its digest identifies the data
from base.provenance import provenance
from nws.disk import writing
from nws.io import sha256_file

PARENT_ENV = "NWS_MLFLOW_PARENT_RUN_ID"
TAGS_ENV = "NWS_MLFLOW_TAGS"  # JSON object of tags every run of this process gets (the pipeline sets {"seed": ...})
DEFAULT_RUNS_DIR = "runs"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
BATCH = 100  # params per log_batch call (MLflow's limit); metrics are sent in chunks of the same size


def tracking_uri(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: the resolved config as MLflow parameters."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


class NullRun:
    """What non-zero ranks (or disabled tracking) get: every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: Any, name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_data(self, folder: str | Path, name: str, context: str) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...

    def steps(self, key: str) -> set[int]:
        """The steps at which metric `key` was logged (a resumed run skips them: no step twice)."""
        return set()

    def other(self, run_id: str) -> NullRun:
        """Another run of the same store, logged to but not ended (a method's child run, seen from the report)."""
        return NullRun()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.end("FAILED" if exc_type else "FINISHED")


class Run(NullRun):
    """An MLflow run driven through MlflowClient (no global active-run state, so stages and tests can hold several).
    A store on a full disk is named (DiskFull, exit 8): SQLite says only "database or disk is full"."""

    def __init__(self, client, run_id: str, store: str = ""):
        self.client, self.run_id, self.store = client, run_id, store or "the MLflow store"

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        with writing(self.store):
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        with writing(self.store):
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with writing(self.store):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        with writing(self.store):
            self.client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        with writing(self.store):
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, tags=items[i:i + BATCH])

    def log_data(self, folder: str | Path, name: str, context: str) -> None:
        """The data folder this stage reads, as a dataset input (the UI's Datasets column): source the folder,
        digest the sha256 of its manifest (which holds the sha256 of every shard), cut to MLflow's 36 characters."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        folder = Path(folder).resolve()
        dataset = Dataset(name=name, digest=sha256_file(folder / MANIFEST)[:16], source_type="local",
                          source=json.dumps({"uri": str(folder)}))
        with writing(self.store):
            self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def other(self, run_id: str) -> NullRun:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return NullRun()  # not in this store (another store, or the store was reset)
        return AttachedRun(self.client, run_id, self.store)

    def end(self, status: str = "FINISHED") -> None:
        with writing(self.store):
            self.client.set_terminated(self.run_id, status)


def store_path(uri: str) -> str:
    """What a full-disk error names: the SQLite file of a `sqlite:///` store, else the URI."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri


def open_client(runs_dir: str | Path = DEFAULT_RUNS_DIR):
    """An MlflowClient of the store. A SQLite store is opened under an exclusive file lock beside it: the first
    opening creates and migrates the schema, and processes doing that at once (stages, seeds, Slurm jobs starting
    together) otherwise fail with "duplicate column" errors."""
    import fcntl

    from mlflow.tracking import MlflowClient

    uri = tracking_uri(runs_dir)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = MlflowClient(uri)
            with writing(db):
                c.search_experiments(max_results=1)  # opens the store: creates/migrates the schema now, under the lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return c


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to its file (MLflow would put them in ./mlruns of whatever folder the
    process runs in); a server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _experiment_id(client, name: str, runs_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location(tracking_uri(runs_dir))
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class AttachedRun(Run):
    """A run another process owns (the pipeline's parent run, seen from a Slurm job): logged to, never ended."""

    def end(self, status: str = "FINISHED") -> None:
        return None


def env_tags() -> dict[str, str]:
    """The tags of $NWS_MLFLOW_TAGS (a JSON object), e.g. the seed of a pipeline run."""
    text = os.environ.get(TAGS_ENV)
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{TAGS_ENV}={text!r} is not a JSON object") from None
    return {str(k): str(v) for k, v in tags.items()}


def start_run(experiment: str, run_name: str, *, runs_dir: str | Path = DEFAULT_RUNS_DIR, enabled: bool = True,
              resume_run_id: str | None = None, tags: dict[str, str] | None = None,
              parent: bool | str = True) -> NullRun:
    """A run in `experiment` (created if needed), child of the run `parent` names, or with `parent=True` of
    $NWS_MLFLOW_PARENT_RUN_ID when set (False: a top-level run);
    `resume_run_id` continues an earlier run of the same stage (a resumed job keeps one metric history); tags of
    $NWS_MLFLOW_TAGS are added (a `seed` tag also names the run), and the provenance tags (a resumed run gets those
    of the process that resumed it). NullRun when disabled."""
    if not enabled:
        return NullRun()
    from mlflow.exceptions import MlflowException

    runs_dir = Path(runs_dir)
    client, store = open_client(runs_dir), store_path(tracking_uri(runs_dir))
    if resume_run_id:
        try:
            client.get_run(resume_run_id)
            client.update_run(resume_run_id, status="RUNNING")
            run = Run(client, resume_run_id, store)
            run.set_tags(provenance())
            return run
        except MlflowException:
            pass  # the store was reset: start a new run
    tags = {**provenance(), **env_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
    if "seed" in tags:
        run_name = f"{run_name} seed{tags['seed']}"
    parent_id = os.environ.get(PARENT_ENV) if parent is True else parent or None
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    with writing(store):
        run = client.create_run(_experiment_id(client, experiment, runs_dir), run_name=run_name, tags=tags)
    return Run(client, run.info.run_id, store)
