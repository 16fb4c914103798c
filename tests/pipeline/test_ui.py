"""The MLflow UI in a browser (issue 7): real runs are logged to a SQLite store (a pipeline parent run, the
incremental loop's child run per method, the report on the parent), the server `make ui` starts (pipeline.ui) is
started on a free loopback port, and headless Chromium renders the experiment's runs table and a child run's page.
The rendered DOM must show the runs' names and a metric's name and value, and the REST API must list the same runs.
Issue 19: the child run's chart view draws the per-task metric acc/task00 as a line (a Plotly chart in the card of
that metric; no card when the metric is missing), and its artifact view shows the method's own accuracy-matrix
figure (the image the page fetched from the run's plots/; the served bytes are the report's figure of this seed).

The screenshots are kept: under the test's tmp folder and copied to $NWS_TEST_ARTIFACTS (default
runs/test-artifacts/mlflow-ui/ of the repository); the test prints where they are."""

import html
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from base.tracking import PARENT_ENV, start_run, tracking_uri
from cluster.mlflow_server import server_command
from pipeline.report import make_report
from pipeline.ui import HOST, experiment_url
from tests.conftest import THREADS
from tests.pipeline.fixtures import make_experiment
from tests.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180  # seconds for the server to answer (it imports MLflow's whole server; slow on a busy machine)
BROWSER_TIMEOUT = 120
CHILDREN = ("incremental-nws", "incremental-finetune")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return answer.read()


def api(url: str, body: dict | None = None) -> dict:
    return json.loads(fetch(url, body))


def start_server(uri: str, port: int, log: Path, request_fixture) -> subprocess.Popen:
    """The server of `make ui`, in its own process group, stopped (group and all) when the test ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(server_command(uri, HOST, port), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    request_fixture.addfinalizer(lambda: stop_group(proc))
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


def page_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def render_dom(url: str, screenshot: Path, profile: Path, ready, tries: int = 3) -> str:
    """The page's DOM after its scripts ran (headless Chromium, --dump-dom with a virtual-time budget), retried
    while `ready(dom)` is false (the React app fetches runs asynchronously; a busy machine is slow)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: scripts/setup.sh installs it (apt-get install chromium)"
    dom = ""
    for attempt in range(tries):
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              f"--user-data-dir={profile}", "--window-size=1400,1000",
                              f"--virtual-time-budget={20000 * (attempt + 1)}", f"--screenshot={screenshot}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=BROWSER_TIMEOUT).stdout
        if ready(dom):
            break
    return dom


def render(url: str, screenshot: Path, profile: Path, expected: list[str], tries: int = 3) -> str:
    """The page's text once every expected string is in it (or after the last try)."""
    dom = render_dom(url, screenshot, profile, lambda d: all(s in page_text(d) for s in expected), tries)
    return page_text(dom)


def chart_card(dom: str, metric: str) -> str | None:
    """The HTML of the run page's chart card of `metric` (its title attribute is the metric's full key)."""
    for card in dom.split('data-testid="experiment-view-compare-runs-card"')[1:]:
        if re.search(rf'<h4[^>]*title="{re.escape(metric)}"', card):
            return card
    return None


def drawn_line(card: str | None) -> bool:
    """A Plotly chart with a drawn line trace in the card (the chart of a metric history)."""
    return card is not None and "js-plotly-plot" in card and 'class="js-line"' in card


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

    shots = [tmp_path / name for name in ("experiment_runs.png", "nws_run.png", "nws_charts.png", "nws_figure.png")]
    listed = render(experiment_url(HOST, port, exp_id) +
                    "?orderByKey=attributes.run_name&orderByAsc=true",  # sorted by name: children shown, not folded
                    shots[0], tmp_path / "chrome", ["pipeline", *CHILDREN])
    page = render(f"{base}/#/experiments/{exp_id}/runs/{child['info']['run_id']}", shots[1], tmp_path / "chrome",
                  ["final_avg_acc", repr(served["final_avg_acc"])])
    rid, figure = child["info"]["run_id"], "plots/acc_matrix_nws.png"
    history = api(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={rid}&metric_key=acc/task00")["metrics"]
    R = nws["acc_matrix"]
    assert sorted((m["step"], m["value"]) for m in history) == [(1, R[0][0]), (2, R[1][0])]
    assert fetch(f"{base}/get-artifact?path={figure}&run_uuid={rid}") == (experiment / "report" / figure).read_bytes()
    charts = render_dom(f"{base}/#/experiments/{exp_id}/runs/{rid}/model-metrics", shots[2], tmp_path / "chrome",
                        lambda dom: drawn_line(chart_card(dom, "acc/task00")))
    image = render_dom(f"{base}/#/experiments/{exp_id}/runs/{rid}/artifacts/{figure}", shots[3], tmp_path / "chrome",
                       lambda dom: f'alt="{figure}" src="blob:' in dom)
    folder = keep(shots)
    print(f"MLflow UI screenshots: {', '.join(map(str, shots))} (copied to {folder})")
    assert drawn_line(chart_card(charts, "acc/task00")), \
        f"no line chart of acc/task00 on the run's chart view: {page_text(charts)[:2000]}"
    assert re.search(rf'<img alt="{re.escape(figure)}" src="blob:', image), \
        f"{figure} not shown on the run's artifact view: {page_text(image)[:2000]}"
    for name in ("pipeline", *CHILDREN):
        assert name in listed, f"run {name} not shown on the experiment page: {listed[:2000]}"
    assert "3 matching runs" in listed
    assert "incremental-nws" in page and "Parent run pipeline" in page
    value = re.search(r"final_avg_acc (\S+)", page)
    assert value, f"metric final_avg_acc not shown on the run page: {page[:2000]}"
    assert float(value.group(1)) == pytest.approx(nws["final_avg_acc"])
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
