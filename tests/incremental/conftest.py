"""Shared fixtures: digits prepared once, pretrain outputs made once (tests/incremental/fixtures.py)."""

import pytest
import torch

from tests.conftest import THREADS
from tests.incremental.fixtures import make_config, make_pretrain, prepare_digits


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread (OMP_NUM_THREADS, 1 under `make test`) keeps the tiny networks fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def pretrained(digits, tmp_path_factory):
    torch.set_num_threads(THREADS)
    return make_pretrain(digits, tmp_path_factory.mktemp("pretrain"), make_config(), steps=15)
