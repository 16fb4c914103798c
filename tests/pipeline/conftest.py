"""The pipeline tests give every run its own runs folder, whose MLflow store is the SQLite file in it: a
MLFLOW_TRACKING_URI of the calling shell would send their runs elsewhere."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def store_in_the_runs_folder():
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before
