"""`nws cluster mlflow-server` and `nws cluster submit --tracking-uri`: the server is started as a user starts it
(on loopback and a free port here), a data job is submitted to the real one-node Slurm with the server's address,
and the submission's parent run and the job's stage run must be in the server's own SQLite store, the stage run a
child of the parent, while the runs folder the jobs share gets no SQLite file at all. A request naming this host
(as jobs on other nodes do: http://<login node>:PORT) is allowed by the server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from cluster.status import wait
from nws.io import read_json
from tests.cluster.conftest import DEMO, ROOT
from tests.cluster.local import free_port
from tests.processes import stop_group

START_TIMEOUT = 180  # MLflow's server imports a lot; slow on a busy machine


def get(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def server(tmp_path):
    """`nws cluster mlflow-server --runs-dir <tmp>/server --host 127.0.0.1 --port P`, up; stopped at the end."""
    port, store = free_port(), tmp_path / "server"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "cluster", "mlflow-server", "--runs-dir",
                                 str(store), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if get(f"{base}/health") == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield base, store
    finally:
        stop_group(proc)


def test_jobs_log_to_the_tracking_server(slurm_env, server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.cli import main as nws

    base, store = server
    api = f"{base}/api/2.0/mlflow/experiments/search?max_results=10"
    assert get(api, f"{socket.gethostname()}:{base.rsplit(':', 1)[1]}") == 200  # jobs may name this host
    assert get(api, "evil.example:80") == 403  # MLflow's DNS-rebinding guard is kept
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NWS_MLFLOW_PARENT_RUN_ID", raising=False)
    assert nws(["cluster", "submit", "-c", str(DEMO), "--stages", "data", "--runs-dir", "runs",
                "--tracking-uri", base]) == 0
    [entry] = read_json(tmp_path / "runs" / "demo" / "cluster" / "submissions.json")["submissions"]
    assert entry["tracking_uri"] == base
    [job] = entry["jobs"]
    states = wait([job["job_id"]], slurm_env, timeout=600)
    log = open(job["log"].replace("%j", job["job_id"])).read()
    assert states == {job["job_id"]: "COMPLETED"}, (log[-2000:], open(job["err"].replace("%j", job["job_id"])).read())
    assert f"export MLFLOW_TRACKING_URI={base}" in open(job["script"]).read()
    # the server's own store holds both runs; nothing wrote a SQLite file into the shared runs folder
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    parent = client.get_run(entry["parent_run_id"])
    assert parent.data.tags["submission"] == entry["stamp"]
    [data] = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert data.data.tags["mlflow.runName"] == "data" and data.data.metrics["units"] >= 5
    assert not (tmp_path / "runs" / "mlflow.db").exists()
