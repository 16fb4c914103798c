"""Experiment configs: YAML validated by pydantic schemas, with `key.sub=value` overrides from the command line.

Every stage owns the schema of its section (a pydantic model with `extra="forbid"`), so an unknown or mistyped key
stops with an error that names it and lists the valid keys. The resolved config is what gets saved next to the
outputs, hashed for caching, and logged to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

M = TypeVar("M", bound=BaseModel)
# an experiment name is a folder under the runs directory and a word of Slurm job names and MLflow runs: letters,
# digits and _ . + -, no separator, no newline, not `.` or `..` (issue 17: `../x` wrote outside the runs folder,
# a newline in it put a shell line into every sbatch script)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def check_name(name: str, key: str = "name") -> str:
    """`name` if it is a safe experiment name (NAME), else a ValueError naming `key` and what is allowed."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{key}: {name!r} cannot name a run folder; use 1-100 letters, digits and _ . + - "
                         "(starting with a letter or digit, no '..')")
    return name


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelConfig(Section):
    """The network every stage builds (nws.models)."""

    arch: str = "resnet18"
    stem: str = "nws"  # imagenet | nws | cifar (ResNets); cifar/imagenet for mobilenet_v2
    width: float = Field(1.0, gt=0)
    pool_size: int = Field(512, ge=2)  # n: kernels per layer-wise pool (seed 004_ §4.3)
    linear_group_size: int = Field(1, ge=1)  # scalars per group in Linear layers (appendix §1)
    # side of the input images of the fully connected networks (fc1024, lenet300), whose first layer depends on it;
    # None = 28 (MNIST, Fashion-MNIST). Opt-in: left out of the resolved config when unset, so every config written
    # before it existed hashes as it did
    input_size: int | None = Field(None, ge=1)

    def has_stem(self) -> bool:
        """Whether `stem` shapes the network: the ResNets and MobileNet-V2 have one, VGG-16 has not."""
        return self.arch.startswith("resnet") or self.arch == "mobilenet_v2"

    def is_fully_connected(self) -> bool:
        return self.arch in FULLY_CONNECTED

    def build(self, num_classes: int):
        import nws

        kwargs: dict[str, Any] = {"num_classes": num_classes, "width": self.width}
        if self.has_stem():
            kwargs["stem"] = self.stem
        if self.is_fully_connected():
            kwargs["input_size"] = self.input_size or 28
        elif self.input_size is not None:
            raise ConfigError(f"model.input_size is for the fully connected networks ({', '.join(FULLY_CONNECTED)}); "
                              f"{self.arch} takes any image size")
        return nws.models.build(self.arch, **kwargs)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        if data.get("input_size") is None:
            data.pop("input_size", None)
        return data


FULLY_CONNECTED = ("fc1024", "lenet300")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and what was expected."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML, so numbers, booleans and lists work)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def validate(schema: type[M], raw: dict, source: str = "config") -> M:
    """`schema(**raw)`, with pydantic's errors turned into one readable ConfigError."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(_describe(schema, err) for err in e.errors())) from None


def _describe(schema: type[BaseModel], err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        valid = sorted(_fields_at(schema, loc[:-1]))
        return f"unknown key {where!r}; valid keys here: {', '.join(valid)}"
    if err["type"] == "value_error":  # a validator's own message, without pydantic's "Value error, " before it
        return f"{where}: {err['ctx']['error']}" if where else str(err["ctx"]["error"])
    return f"{where}: {err['msg']}"


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = schema
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def load_config(schema: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    return validate(schema, apply_overrides(load_yaml(path), overrides or []), source=str(path))


def resolved(cfg: BaseModel) -> dict:
    """The resolved config as plain data (defaults filled in): saved next to outputs and logged."""
    return cfg.model_dump(mode="json")


def config_hash(cfg: BaseModel | dict) -> str:
    data = resolved(cfg) if isinstance(cfg, BaseModel) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def experiment_schema():
    """The whole experiment file: one section per stage (each stage package owns its section's schema)."""
    from data_prep.config import DataConfig
    from incremental.config import IncrementalConfig
    from pretrain.config import PretrainConfig

    class Experiment(Section):
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

    return Experiment

