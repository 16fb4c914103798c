"""Test-wide settings: torch threads per test process from OMP_NUM_THREADS (`make test` sets 1: the CI machine has 2
cores shared by everything; `OMP_NUM_THREADS=2 make test` runs the whole suite at 2 threads), and a header naming
the machine, so a CI log says on which CPU, torch and BLAS its float results were computed."""

import os

import torch

from tests.machine import summary

THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
torch.set_num_threads(THREADS)
# the seed of the trained fixtures and runs whose quality tests check (scripts/test_margins.py varies it)
SEED = int(os.environ.get("NWS_TEST_SEED") or 0)


def pytest_report_header(config):
    return [summary()]
