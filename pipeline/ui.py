"""`python -m pipeline.ui [--runs-dir runs] [--port 5000] [--host 127.0.0.1]` (`make ui`): the MLflow UI of the
project's store on this machine only.

The store is the one every stage logs to (base.tracking.tracking_uri: MLFLOW_TRACKING_URI, else the SQLite file
runs/mlflow.db); `mlflow server` (of which `mlflow ui` is an alias) serves it on the loopback interface, with the
artifacts folder the stages use (mlartifacts/ beside the SQLite file) for anything created from the UI. A store that
is already a tracking server needs no UI of ours: its address is printed instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from base.tracking import DEFAULT_RUNS_DIR, tracking_uri
from cluster.mlflow_server import server_command

HOST, PORT = "127.0.0.1", 5000


def experiment_url(host: str, port: int, experiment_id: str) -> str:
    """The runs table of an experiment (MLflow 3 opens an experiment on its GenAI overview, empty for these runs)."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def experiment_links(uri: str, host: str, port: int) -> list[str]:
    from mlflow.tracking import MlflowClient

    return [f"  {e.name}: {experiment_url(host, port, e.experiment_id)}"
            for e in MlflowClient(uri).search_experiments()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR),
                        help="folder of the default store (runs/mlflow.db); MLFLOW_TRACKING_URI wins")
    parser.add_argument("--host", default=HOST, help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    uri = tracking_uri(args.runs_dir)
    if uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI is a tracking server already: open {uri} in a browser")
        return 0
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    links = experiment_links(uri, args.host, args.port)
    print(f"MLflow UI of {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", *links, sep="\n", flush=True)
    cmd = server_command(uri, args.host, args.port)
    os.execv(cmd[0], cmd)  # the server takes over this process: Ctrl-C and signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
