"""The `data` section of an experiment config: which source to prepare, how to split it into tasks, formats."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.config import Section


class TasksConfig(Section):
    """Task split (data_prep.tasks.split_tasks): group (superclass / dataset per task), blocks, random, explicit, all;
    `auto` as `nws data prepare --tasks auto` (group when the source has groups, else blocks of 2 classes)."""

    kind: Literal["auto", "group", "blocks", "random", "explicit", "all"] = "auto"
    classes_per_task: int | None = Field(None, ge=1)
    num_tasks: int | None = Field(None, ge=1)
    seed: int = 0
    order: Literal["alphabetical", "source"] | None = None
    explicit: list[list[str | int]] | None = None


class DataConfig(Section):
    source: str = "digits"  # digits | fashion_mnist | cifar100 | imagenet | image_folder | cub2sketches | miniimagenet
    root: str | None = None  # the dataset as distributed; None = the source's default
    options: dict[str, Any] = Field(default_factory=dict)  # source options, e.g. {test_fraction: 0.2, seed: 0}
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    # images kept per class in the named splits, e.g. {train: 150}: a small-data copy of any source (data_prep.subset;
    # a seeded sample, the same images in every unit); the splits not named stay whole
    per_class: dict[str, int] = Field(default_factory=dict)
    per_class_seed: int = 0
    pretrain_set: bool = True  # also write the all-classes unit `pretrain` (pool pretraining data)
    formats: list[Literal["wds", "ffcv"]] = Field(default_factory=lambda: ["wds", "ffcv"])
    loader: Literal["wds", "ffcv", "memory"] = "wds"  # the format the training stages read
    max_per_shard: int = Field(10_000, ge=1)
    image_size: int | None = Field(None, ge=8)  # training resolution; None = the images' own size
    strict: bool = False  # fail on a bad image instead of skipping and listing it
