"""The base at the bottom (issue 18): base imports only `nws` and third-party libraries, the stages import the base
and never the pipeline above them (their command modules aside: they become the one CLI module), and a seed's config
is the loaded config itself, not validated a second time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from base.config import config_hash, load_config, resolved
from pipeline.config import experiment_schema
from pipeline.layout import seed_config

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("base", "nws", "data_prep", "loaders", "pretrain", "incremental", "pipeline", "cluster", "tests")


def imported(path: Path) -> set[str]:
    """The top-level packages of the project that `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PROJECT)


def test_the_base_imports_only_nws():
    for path in sorted((ROOT / "base").rglob("*.py")):
        assert imported(path) <= {"base", "nws"}, path


@pytest.mark.parametrize("stage", ["data_prep", "pretrain", "incremental"])
def test_a_stage_does_not_import_the_pipeline(stage):
    for path in sorted((ROOT / stage).rglob("*.py")):
        if path.name == "cli.py":  # the stage commands, merged into the one CLI module (issue 18)
            continue
        assert not imported(path) & {"pipeline", "cluster"}, path


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
