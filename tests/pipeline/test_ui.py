"""The MLflow UI in a browser (issue 7): real runs are logged to a SQLite store (a pipeline parent run, the
incremental loop's child run per method, the report on the parent), the server `make ui` starts (pipeline.ui) is
started on a free loopback port, and headless Chromium renders the experiment's runs table and a child run's page.
The rendered DOM must show the runs' names and a metric's name and value, and the REST API must list the same runs.

The screenshots are kept: under the test's tmp folder and copied to $NWS_TEST_ARTIFACTS (default
runs/test-artifacts/mlflow-ui/ of the repository); the test prints where they are."""

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from pipeline.report import make_report
from pipeline.tracking import PARENT_ENV, start_run, tracking_uri
from pipeline.ui import HOST, experiment_url, server_command
from tests.conftest import THREADS
from tests.pipeline.fixtures import make_experiment

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180  # seconds for the server to answer (it imports MLflow's whole server; slow on a busy machine)
BROWSER_TIMEOUT = 120
CHILDREN = ("incremental-nws", "incremental-finetune")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def api(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return json.loads(answer.read())


def start_server(uri: str, port: int, log: Path, request_fixture) -> subprocess.Popen:
    """The server of `make ui`, in its own process group, stopped (group and all) when the test ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(server_command(uri, HOST, port), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    request_fixture.addfinalizer(stop)
    return proc


def wait_until_up(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer on {base} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def render(url: str, screenshot: Path, profile: Path, expected: list[str], tries: int = 3) -> str:
    """The page's text after its scripts ran (headless Chromium, --dump-dom with a virtual-time budget), retried
    while an expected string is missing (the React app fetches runs asynchronously; a busy machine is slow)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: scripts/setup.sh installs it (apt-get install chromium)"
    text = ""
    for attempt in range(tries):
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={profile}", "--window-size=1400,1000",
                              f"--virtual-time-budget={15000 * (attempt + 1)}", f"--screenshot={screenshot}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=BROWSER_TIMEOUT).stdout
        text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))
        if all(s in text for s in expected):
            break
    return text


def keep(paths: list[Path]) -> Path:
    folder = Path(os.environ.get("NWS_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts")) / "mlflow-ui"
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.is_file():
            shutil.copy(path, folder / path.name)
    return folder


def test_mlflow_ui_shows_the_pipeline_runs_and_their_metrics(tmp_path, monkeypatch, request):
    torch.set_num_threads(THREADS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = tracking_uri()
    parent = start_run("t", "pipeline")  # creates the store's tables before the server opens it
    port, log = free_port(), tmp_path / "server.log"
    server = start_server(uri, port, log, request)  # it starts up (slowly) while the runs are made and logged
    monkeypatch.setenv(PARENT_ENV, parent.run_id)
    experiment = make_experiment(tmp_path, seeds=(0,), track=True)
    make_report(experiment, tracker=parent)
    parent.end()
    nws = json.loads((experiment / "seed0" / "incremental" / "nws" / "metrics.json").read_text())

    base = f"http://{HOST}:{port}"
    wait_until_up(server, base, log)
    exp_id = api(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=t")["experiment"]["experiment_id"]
    runs = api(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert set(by_name) == {"pipeline", *CHILDREN}
    for name in CHILDREN:
        tags = {t["key"]: t["value"] for t in by_name[name]["data"]["tags"]}
        assert tags["mlflow.parentRunId"] == parent.run_id
    child = by_name["incremental-nws"]
    served = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    assert served["final_avg_acc"] == pytest.approx(nws["final_avg_acc"])
    parent_metrics = {m["key"] for m in by_name["pipeline"]["data"]["metrics"]}
    assert "report.nws.final_avg_acc" in parent_metrics

    shots = [tmp_path / "experiment_runs.png", tmp_path / "nws_run.png"]
    listed = render(experiment_url(HOST, port, exp_id) +
                    "?orderByKey=attributes.run_name&orderByAsc=true",  # sorted by name: children shown, not folded
                    shots[0], tmp_path / "chrome", ["pipeline", *CHILDREN])
    page = render(f"{base}/#/experiments/{exp_id}/runs/{child['info']['run_id']}", shots[1], tmp_path / "chrome",
                  ["final_avg_acc", repr(served["final_avg_acc"])])
    folder = keep(shots)
    print(f"MLflow UI screenshots: {shots[0]}, {shots[1]} (copied to {folder})")
    for name in ("pipeline", *CHILDREN):
        assert name in listed, f"run {name} not shown on the experiment page: {listed[:2000]}"
    assert "3 matching runs" in listed
    assert "incremental-nws" in page and "Parent run pipeline" in page
    value = re.search(r"final_avg_acc (\S+)", page)
    assert value, f"metric final_avg_acc not shown on the run page: {page[:2000]}"
    assert float(value.group(1)) == pytest.approx(nws["final_avg_acc"])
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
