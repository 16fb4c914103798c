"""The `pretrain` section of an experiment config: pool distillation (seed 004_ §4.2, Eq. 3/4) and the plain backbone.

Defaults are the official pool-pretraining settings (notes/algorithms.md §1.3): SGD Nesterov, momentum 0.9, weight
decay 4e-5, lr 0.01, global batch 2048, 160 epochs with one step of ×0.1 at epoch 100, beta 0.5, pool decay 0.99.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import Section


class DistillConfig(Section):
    """nws.PoolDistiller: EMA decay of Eq. 4 and the dead-kernel restart the official code lacks."""

    decay: float = Field(0.99, gt=0, lt=1)
    eps: float = Field(1e-5, gt=0)
    restart_every: int = Field(100, ge=1)  # optimizer steps between dead-kernel restarts
    dead_usage: float = Field(1e-2, ge=0)  # EMA assignment count under which a pool kernel is dead


class DebugConfig(Section):
    """Fault injection for the non-finite guard's tests: `term` ("ce" or an NWS layer's name) is made inf at the
    listed optimizer steps (0-based, counting skipped ones)."""

    nonfinite_steps: list[int] = Field(default_factory=list)
    nonfinite_term: str = "ce"


class PretrainConfig(Section):
    kind: Literal["nws", "plain", "both"] = "nws"  # plain = the float backbone the baselines start from
    # the pretrain outputs of another experiment to start from (e.g. runs/imagenet_pools_resnet18/seed1993/pretrain):
    # the pipeline's pretrain stage then checks that folder instead of training (the paper's benchmarks share the
    # ImageNet pools); the `nws pretrain` command ignores it
    reuse: str | None = None
    epochs: int = Field(160, ge=1)
    batch_size: int = Field(2048, ge=1)  # global: micro × accumulation × world size, whatever the world size
    micro_batch: int | None = Field(None, ge=1)  # per rank and step; None = batch_size / world size
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(4e-5, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [100])  # epochs where lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0)
    beta: float = Field(0.5, ge=0)  # weight of the summed Eq. 2 terms
    # BatchNorm statistics over the global batch (all ranks) rather than each rank's share, so that W ranks train
    # the network of 1 rank (pretrain/global_bn.py); off = the usual DDP BatchNorm (per-rank statistics)
    sync_batchnorm: bool = False
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 = torch autocast through DeepSpeed (BatchNorm stays fp32)
    zero_stage: int = Field(1, ge=0, le=3)
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm; None = no clipping
    pool_init: Literal["normal", "kmeans", "sample"] = "normal"  # normal = the paper's random pools
    warm_start: str | None = None  # plain_backbone.safetensors whose kernels seed the pools (pool_init kmeans)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    augment: bool = True  # the loader's training augmentation
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)  # CPU threads per rank; None = torch's default (or OMP_NUM_THREADS)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cut epochs short (smoke tests, benchmarks)
    eval_batch_size: int = Field(256, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between checkpoints (0 = epoch ends only)
    keep_checkpoints: int = Field(2, ge=1)
    max_consecutive_skips: int = Field(5, ge=1)  # non-finite steps in a row before the run stops
    log_every: int = Field(10, ge=1)  # optimizer steps between metric logs
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.warm_start is not None and self.pool_init == "normal":
            raise ValueError("warm_start seeds the pools from a network's kernels: set pool_init to kmeans or sample")
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        return self

    def kinds(self) -> list[str]:
        return ["nws", "plain"] if self.kind == "both" else [self.kind]
