"""base.provenance: the tags every run gets; in this checkout the commit and dirty flag git reports, outside a
git checkout none of them and no error; and start_run tags new and resumed runs with them."""

import shlex
import subprocess
import sys
from importlib import metadata

from mlflow.tracking import MlflowClient

from base.provenance import SOURCE, provenance
from base.tracking import PARENT_ENV, start_run, tracking_uri


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, check=True).stdout


def test_tags_inside_the_checkout():
    tags = provenance()
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD").strip()
    assert tags["git.dirty"] == ("true" if git("status", "--porcelain").strip() else "false")
    assert tags["command"] == shlex.join(sys.argv)
    assert tags["version.torch"] == metadata.version("torch")
    assert tags["version.deepspeed"] == metadata.version("deepspeed")
    assert tags["host"]


def test_outside_a_checkout_no_git_tags(tmp_path):
    tags = provenance(tmp_path)
    assert "mlflow.source.git.commit" not in tags and "git.dirty" not in tags
    assert tags["command"] == shlex.join(sys.argv) and tags["version.torch"] == metadata.version("torch")


def test_new_and_resumed_runs_are_tagged(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    first = start_run("exp", "stage", runs_dir=tmp_path)
    client = MlflowClient(tracking_uri(tmp_path))
    created = client.get_run(first.run_id).data.tags
    assert {k: created.get(k) for k in provenance()} == provenance()
    client.delete_tag(first.run_id, "host")  # the resumed run gets its tags again
    first.end("FAILED")
    again = start_run("exp", "stage", runs_dir=tmp_path, resume_run_id=first.run_id)
    assert again.run_id == first.run_id
    tags = client.get_run(first.run_id).data.tags
    assert {k: tags.get(k) for k in provenance()} == provenance()
