"""The incremental section: paper defaults, strict keys, per-method options validated by the method's schema."""

import pytest

from incremental.config import IncrementalConfig
from incremental.methods import available, get_method, make_method
from pipeline.config import ConfigError, experiment_schema, validate
from tests.incremental.fixtures import make_config


def test_defaults_are_the_papers_common_hyperparameters():
    inc = IncrementalConfig()
    assert (inc.epochs, inc.batch_size, inc.lr, inc.momentum, inc.weight_decay) == (100, 32, 0.01, 0.9, 1e-5)
    assert (inc.milestones, inc.gamma, inc.beta, inc.codec, inc.head) == ([50, 80], 0.1, 0.5, "smallest", "nws")
    assert [inc.lr_factor(e) for e in (0, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="incremental.epoch'.*valid keys"):
        validate(experiment_schema(), {"incremental": {"epoch": 3}})


def test_decreasing_milestones_are_refused():
    with pytest.raises(ConfigError, match="milestones"):
        validate(experiment_schema(), {"incremental": {"milestones": [80, 50]}})


def test_methods_are_discovered_from_their_files():
    assert {"nws", "finetune"} <= set(available())
    assert get_method("nws").name == "nws"
    with pytest.raises(ConfigError, match="unknown method 'nope'.*finetune"):
        get_method("nope")


def test_method_options_are_validated_by_the_method(tmp_path):
    cfg = make_config(options={"finetune": {"nonsense": 1}})
    with pytest.raises(ConfigError, match="incremental.options.finetune.*nonsense"):
        make_method("finetune", cfg, tmp_path, tmp_path, tmp_path / "out", [])
