"""The `data` section of an experiment config: which source to prepare, how to split it into tasks, formats."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from base.config import Section

# the keys of the task families, opt-in: left out of the resolved config when unset, so every config written before
# they existed resolves and hashes (stored runs, pipeline stage keys) as it did
FAMILY_KEYS = ("count", "angles", "max_angle")
# what each kind reads besides `kind`; a key set for a kind that does not read it is an error naming it
KIND_KEYS = {"auto": {"classes_per_task", "num_tasks"}, "group": {"order"}, "blocks": {"classes_per_task", "num_tasks"},
             "random": {"classes_per_task", "num_tasks", "seed"}, "explicit": {"explicit"}, "all": set(),
             "permuted": {"count", "seed"}, "rotated": {"count", "angles", "max_angle"}}


class TasksConfig(Section):
    """Task split (data_prep.tasks.split_tasks): group (superclass / dataset per task), blocks, random, explicit, all;
    `auto` as `nws data prepare --tasks auto` (group when the source has groups, else blocks of 2 classes); the task
    families `permuted` ({kind: permuted, count: N, seed: S}: task t permuted by seed S + t) and `rotated`
    ({kind: rotated, count: N} at t * max_angle / N degrees, max_angle 360 by default, or {kind: rotated, angles:
    [..]}), each task with every class of the source."""

    kind: Literal["auto", "group", "blocks", "random", "explicit", "all", "permuted", "rotated"] = "auto"
    classes_per_task: int | None = Field(None, ge=1)
    num_tasks: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    order: Literal["alphabetical", "source"] | None = None
    explicit: list[list[str | int]] | None = None
    count: int | None = Field(None, ge=1)  # permuted / rotated: the number of tasks
    angles: list[float] | None = None  # rotated: each task's angle in degrees (counter-clockwise)
    max_angle: float | None = Field(None, gt=0, le=360)  # rotated: angles t * max_angle / count; default 360

    @model_validator(mode="after")
    def _keys_of_the_kind(self):
        stray = sorted(k for k in self.model_fields_set - {"kind"} if k not in KIND_KEYS[self.kind]
                       and not (k == "seed" and self.seed == 0) and getattr(self, k) is not None)
        if stray:
            raise ValueError(f"{stray[0]} does not apply to kind {self.kind!r}, which reads "
                             f"{', '.join(sorted(KIND_KEYS[self.kind])) or 'no other key'}")
        if self.kind == "permuted" and self.count is None:
            raise ValueError("count: permuted tasks need the number of tasks")
        if self.kind == "rotated":
            if self.angles is None and self.count is None:
                raise ValueError("count: rotated tasks need the number of tasks (or angles)")
            if self.angles is not None:
                if self.max_angle is not None:
                    raise ValueError("max_angle: give angles or max_angle, not both")
                if not self.angles or not all(math.isfinite(a) for a in self.angles):
                    raise ValueError(f"angles: expected a non-empty list of finite angles, got {self.angles}")
                if self.count is not None and self.count != len(self.angles):
                    raise ValueError(f"count: {self.count}, but angles lists {len(self.angles)} angles")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        for key in FAMILY_KEYS:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def split_options(self) -> dict:
        """The family's options for data_prep.tasks.split_tasks (empty for the other kinds)."""
        if self.kind == "permuted":
            return {"count": self.count, "seed": self.seed}
        if self.kind == "rotated":
            opts = {"count": self.count, "angles": self.angles, "max_angle": self.max_angle}
            return {k: v for k, v in opts.items() if v is not None}
        return {}


class DataConfig(Section):
    source: str = "digits"  # digits | fashion_mnist | cifar100 | imagenet | image_folder | cub2sketches | miniimagenet
    root: str | None = None  # the dataset as distributed; None = the source's default
    options: dict[str, Any] = Field(default_factory=dict)  # source options, e.g. {test_fraction: 0.2, seed: 0}
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    # images kept per class in the named splits, e.g. {train: 150}: a small-data copy of any source (data_prep.subset;
    # a seeded sample, the same images in every unit); the splits not named stay whole
    per_class: dict[str, int] = Field(default_factory=dict)
    per_class_seed: int = 0
    pretrain_set: bool = True  # also write the all-classes unit `pretrain` (pool pretraining; a family's images)
    formats: list[Literal["wds", "ffcv"]] = Field(default_factory=lambda: ["wds", "ffcv"])
    loader: Literal["wds", "ffcv", "memory"] = "wds"  # the format the training stages read
    max_per_shard: int = Field(10_000, ge=1)
    image_size: int | None = Field(None, ge=8)  # training resolution; None = the images' own size
    strict: bool = False  # fail on a bad image instead of skipping and listing it

    @model_validator(mode="after")
    def _family_needs_the_pretrain_unit(self):
        if self.tasks.kind in ("permuted", "rotated") and not self.pretrain_set:
            raise ValueError(f"pretrain_set: {self.tasks.kind} tasks read the images of the all-classes unit "
                             "`pretrain` (stored once; each task applies its own transform): it must be true")
        return self
