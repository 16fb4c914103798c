"""The config validated once per process (issue 18): a seed's config is the loaded config with one seed, not the
resolved data validated a second time (the import rules of the base are tests/test_imports.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import config_hash, load_config, resolved
from pipeline.config import experiment_schema
from pipeline.layout import seed_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_a_seed_config_is_the_loaded_config_with_one_seed(config):
    """What seed<S>/config.yaml holds and the config a stage runs with, as when they were validated again."""
    cfg = load_config(experiment_schema(), config)
    for seed in cfg.seeds:
        seeded, data = seed_config(cfg, seed)
        again = experiment_schema().model_validate({**resolved(cfg), "seeds": [seed]})
        assert data == resolved(again) and list(data) == list(resolved(again))
        assert config_hash(seeded) == config_hash(again)
    assert cfg.seeds == load_config(experiment_schema(), config).seeds  # the loaded config is left as it was
