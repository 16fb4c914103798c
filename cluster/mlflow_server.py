"""`nws cluster mlflow-server [--runs-dir runs] [--host 0.0.0.0] [--port 5000]`: one MLflow tracking server for
the jobs of a cluster.

Without it every job writes the SQLite file runs/mlflow.db itself, on what on a cluster is a shared file system,
where SQLite's locks are unreliable (NFS, Lustre) and jobs writing at once wait on each other. Started once on a
host the compute nodes reach (a login node), the server alone owns that file; the jobs send their runs to it over
HTTP (`nws cluster submit --tracking-uri http://HOST:PORT` exports it in every job) and their artifacts through it
to mlartifacts/ beside the file. MLflow answers only requests whose Host header it allows: loopback and private
addresses by default, plus this host's names here, so jobs may name the server by its host name.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from base.tracking import artifact_location

WORKERS = 4  # request handlers: many jobs log at once


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The `mlflow server` command line for the store at `uri` (one worker: a UI for one person, pipeline/ui.py;
    a cluster's jobs get more, WORKERS)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    artifacts = artifact_location(uri)
    if artifacts is not None:
        cmd += ["--artifacts-destination", artifacts]
    return cmd


def store_uri(runs_dir: Path) -> str:
    """The runs folder's SQLite store, the one `nws pipeline run` uses by default (MLFLOW_TRACKING_URI is where
    clients send runs, so the server never reads it)."""
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def allowed_hosts(names: list[str]) -> str:
    """MLflow's default Host headers (loopback, private addresses) and `names`, each with any port."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    ours = [h for name in dict.fromkeys(filter(None, names)) for h in (name, f"{name}:*")]
    return ",".join([*get_default_allowed_hosts(), *ours])


def server_command_for(runs_dir: Path, host: str, port: int, workers: int = WORKERS) -> list[str]:
    """The `mlflow server` command for `runs_dir`'s store, allowing this host's names in the Host header."""
    names = [socket.gethostname(), socket.getfqdn(), host if host not in ("0.0.0.0", "::") else ""]
    return [*server_command(store_uri(runs_dir), host, port, workers), "--allowed-hosts", allowed_hosts(names)]

