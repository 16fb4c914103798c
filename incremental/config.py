"""The `incremental` section of an experiment config: the task loop every method shares (seed 004_ §5.4).

Defaults are the paper's common hyperparameters (§5.4, Split-CIFAR-100): SGD momentum 0.9, weight decay 1e-5,
lr 0.01 divided by 10 at epochs 50 and 80, 100 epochs, batch 32; beta 0.5 (0.1 for CUB-to-Sketches). The official
code adds Nesterov and weight decay 4e-5 (notes/algorithms.md §1.4); both are settable. Options that only one method
reads live under `options.<method>` and are validated by that method's own schema (incremental.methods).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config import Section

# keys that do not change what a finished task stores: a run may be resumed or extended with other values
RESUME_NEUTRAL = ("methods", "num_tasks", "track", "num_workers", "eval_batch_size", "log_every")


class IncrementalConfig(Section):
    methods: list[str] = Field(default_factory=lambda: ["nws", "finetune"])  # run in this order
    num_tasks: int | None = Field(None, ge=1)  # the first N tasks of tasks.json; None = all
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)  # global: split over the processes of `accelerate launch`
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-5, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [50, 80])  # epochs where lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0)
    beta: float = Field(0.5, ge=0)  # NWS: weight of the summed Eq. 2 similarity terms
    head: Literal["nws", "float"] = "nws"  # NWS: the head is an NWS layer over the head pool, or a float layer
    codec: Literal["smallest", "packed", "entropy", "delta", "near"] = "smallest"  # NWS: how task indices are stored
    precision: Literal["bf16", "fp32"] = "fp32"  # bf16 = accelerate's autocast (the search stays fp32)
    cpu: bool = False  # force the CPU even where a GPU is visible
    augment: bool = True  # the loader's training augmentation
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cut epochs short (a subset per epoch; smoke runs)
    max_consecutive_skips: int = Field(5, ge=1)  # non-finite losses in a row before the task stops
    log_every: int = Field(50, ge=1)  # optimizer steps between logged training losses
    track: bool = True  # MLflow child run per method
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-method options, by method name

    @model_validator(mode="after")
    def _check(self):
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods listed twice: {self.methods}")
        return self

    def lr_factor(self, epoch: int) -> float:
        """gamma ** (number of milestones reached): the MultiStepLR of the paper, as a function of the epoch."""
        return self.gamma ** sum(epoch >= m for m in self.milestones)
