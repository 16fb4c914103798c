"""Shared fixtures: digits prepared once, pretrain outputs made once (tests/incremental/fixtures.py)."""

import pytest
import torch

from base.config import validate
from pipeline.config import experiment_schema
from tests.conftest import SEED, THREADS
from tests.incremental.fixtures import DATA, LENET, make_config, make_pretrain, prepare_digits


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


@pytest.fixture(scope="session")
def lenet_pretrained(digits, tmp_path_factory):
    """Pretrain outputs of LeNet-300-100 on the 8x8 digits: a network without convolution or BatchNorm."""
    cfg = validate(experiment_schema(), {"name": "t", "seeds": [SEED], "data": DATA, "model": LENET})
    return make_pretrain(digits, tmp_path_factory.mktemp("lenet_pretrain"), cfg, steps=15)
