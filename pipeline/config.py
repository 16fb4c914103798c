"""The experiment file: the stages' config sections composed into one schema, and the stage commands' way from
`-c CONFIG key.sub=value ...` to a config and the pipeline's folders.

The sections' base, loading, overrides, validation and hashing are base.config's (every stage imports them); the
pipeline, on top of the stages, is what knows all of them at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from base.config import ConfigError, ModelConfig, Section, check_name, load_config
from data_prep.config import DataConfig
from incremental.config import IncrementalConfig
from pretrain.config import PretrainConfig


class Experiment(Section):
    """The whole experiment file: one section per stage (each stage package owns its section's schema)."""

    name: str = "experiment"
    seeds: list[int] = Field(default_factory=lambda: [0])
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "the experiment name")

    @model_validator(mode="after")
    def _family_without_augmentation(self):
        """A permuted or rotated task trains without augmentation (data_prep.augment says why): refused when
        the config loads, not when the incremental stage opens its first loader."""
        if self.data.tasks.kind in ("permuted", "rotated") and self.incremental.augment:
            raise ValueError(f"incremental.augment: {self.data.tasks.kind} tasks (data.tasks.kind) train without "
                             "augmentation (a random crop or flip moves pixels); set incremental.augment: false")
        return self


def experiment_schema() -> type[Experiment]:
    """The schema of a whole experiment file (Experiment)."""
    return Experiment


def stage_config(args):
    """The experiment config of a stage command (`-c CONFIG key.sub=value ...`) and the base.layout.Layout its
    files go to by default: the pipeline's, under --runs-dir (default runs: outputs and the MLflow store) and
    --variant. Raises ConfigError (a ValueError) for a bad file or key."""
    from base.layout import Layout
    from base.tracking import DEFAULT_RUNS_DIR

    cfg = load_config(experiment_schema(), args.config, args.overrides)
    return cfg, Layout(Path(args.runs_dir or DEFAULT_RUNS_DIR), cfg.name, getattr(args, "variant", None))


def add_layout_arguments(p, stage: str) -> None:
    """The options of a per-seed stage command (`nws pretrain`, `nws incremental`) that place it in the pipeline's
    layout, read by seed_stage_config: --seed, --data, --out, --runs-dir, --variant."""
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="which seed's run (runs/<name>/seed<S>; default the config's first seed)")
    p.add_argument("--data", type=Path, default=None, help="prepared data folder (default runs/<name>/data)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default runs/<name>/seed<S>/{stage})")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where every default folder (runs/<name>/...) and the default MLflow store (mlflow.db) are "
                        "(default runs); MLFLOW_TRACKING_URI wins for the store")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="a run of another config kept apart: runs/<name>/variants/NAME/ (see nws pipeline run)")


@contextmanager
def seed_tagged(seed: int) -> Iterator[None]:
    """Meanwhile this process's MLflow runs get the seed tag (and the ` seed<S>` in their names) that the pipeline
    gives the stages it starts (base.tracking.TAGS_ENV), so a stage run by hand is named like the pipeline's."""
    from base.tracking import TAGS_ENV

    saved = os.environ.get(TAGS_ENV)
    os.environ[TAGS_ENV] = json.dumps({"seed": str(seed), **json.loads(saved or "{}")})
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TAGS_ENV, None)
        else:
            os.environ[TAGS_ENV] = saved


def seed_stage_config(args):
    """(config, layout, seed) of a per-seed stage command (pretrain, incremental): the config of seed S (`--seed`,
    default the config's first) with `seeds: [S]`, as the pipeline gives it to that stage, so a stage run by hand
    and one run by the pipeline are the same run. When the command writes into the layout (no --out), the folder's
    other runs must be of this config (pipeline.layout's variant rule; --replace skips it) and the seed's
    config.yaml is written, as the pipeline writes it: `nws report` reads it."""
    from base.ranks import is_rank_zero
    from pipeline.layout import check_folder, seed_config, write_seed_config

    cfg, layout = stage_config(args)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    if seed not in cfg.seeds:
        raise ConfigError(f"--seed {seed}: not among the config's seeds {cfg.seeds} ({args.config})")
    cfg, data = seed_config(cfg, seed)
    if args.out is None:
        if not args.replace:
            check_folder(layout, data)
        if is_rank_zero():
            write_seed_config(layout, seed, data)
    return cfg, layout, seed
