"""The experiment file: the stages' config sections composed into one schema, and the stage commands' way from
`-c CONFIG key.sub=value ...` to a config and the pipeline's folders.

The sections' base, loading, overrides, validation and hashing are base.config's (every stage imports them); the
pipeline, on top of the stages, is what knows all of them at once.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from base.config import ModelConfig, Section, check_name
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

