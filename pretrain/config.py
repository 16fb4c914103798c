"""The `pretrain` section of an experiment config: pool distillation (seed 004_ §4.2, Eq. 3/4) and the plain backbone.

Defaults are the official pool-pretraining settings (notes/algorithms.md §1.3): SGD Nesterov, momentum 0.9, weight
decay 4e-5, lr 0.01, global batch 2048, 160 epochs with one step of ×0.1 at epoch 100, beta 0.5, pool decay 0.99 —
except where the official settings let a short run collapse without a word (issue 14: a config copied to a folder of
1,400 images ended 30 steps at chance, every 3×3 layer on 1-2 of its 64 pool kernels):

- `pool_init` defaults to `kmeans` (k-means++ then Lloyd over the layer's own initial temporary kernels), not the
  paper's N(0, 1) (`normal`, still available and kept by the paper's ImageNet config). Kaiming-initialised 3×3
  kernels have norms of ~0.1-0.5, N(0, 1) pool kernels ~3: the one pool kernel of smallest norm is the nearest to
  every temporary kernel, the layer computes with one kernel, and only restarts can undo it (notes §1.1: the EMA
  alone takes ~1,000 steps). Pools at the scale of the kernels they serve are fully used from the first step.
- `distill.restart_every` defaults to a period derived from the run's length (nws.distill.restart_period: ten
  restarts a run, at most one EMA memory apart), and `distill.dead_usage` to 1.0: at 1e-2 a pool kernel unused
  since the start counts as dead only after log(0.01)/log(0.99) = 459 steps, longer than a short run.
- `milestones` may be fractions of `epochs` (0.75 = at 75% of the run), as the official code's [0.5E, 0.8E].
- `recalibrate_bn`: the BatchNorm statistics of the final NWS network are re-estimated with its final searched
  kernels (pretrain/recalibrate.py): the running averages of training mix networks whose kernels jumped between
  pool entries and whose pools moved after the last forward.
- `health` / `allow_degenerate`: the check of pretrain/health.py, which stops a degenerate result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from base.config import Section

# keys of the pretrain section that judge the outputs without changing them: not part of the stage's identity
JUDGING_KEYS = ("health", "allow_degenerate")


class DistillConfig(Section):
    """nws.PoolDistiller: EMA decay of Eq. 4 and the dead-kernel restart the official code lacks."""

    decay: float = Field(0.99, gt=0, lt=1)
    eps: float = Field(1e-5, gt=0)
    # optimizer steps between dead-kernel restarts; None = nws.distill.restart_period(total steps, decay)
    restart_every: int | None = Field(None, ge=1)
    # EMA assignment count under which a pool kernel is dead: 1.0 = it served fewer than one temporary kernel per step
    dead_usage: float = Field(1.0, ge=0)


class HealthConfig(Section):
    """Thresholds of the post-pretraining health check (pretrain/health.py). They judge the outputs and do not change
    them: they are not part of the stage's identity, so changing them never retrains."""

    # a layer is degenerate when it uses fewer than this share of the pool kernels it could use (min(1, kernels /
    # pool size)): the collapse of issue 14 used 1-2 of 64 (0.02-0.03); the shipped demo uses >= 0.94 in every layer
    min_kur: float = Field(0.1, ge=0, le=1)
    # the test accuracy is at chance when a one-sided binomial test against 1/classes gives p >= alpha
    alpha: float = Field(0.01, gt=0, lt=1)
    # a run of fewer optimizer steps, or of less than one epoch, is a smoke test of the machinery (too short for the
    # pools' EMA to move or a network to learn): its outputs are checked and warned about, not stopped
    min_steps: int = Field(10, ge=0)


class DebugConfig(Section):
    """Fault injection for the non-finite guard's tests: `term` ("ce" or an NWS layer's name) is made inf at the
    listed optimizer steps (0-based, counting skipped ones)."""

    nonfinite_steps: list[int] = Field(default_factory=list)
    nonfinite_term: str = "ce"


class PretrainConfig(Section):
    kind: Literal["nws", "plain", "both"] = "nws"  # plain = the float backbone the baselines start from
    # the pretrain outputs of another experiment to start from (e.g. imagenet_pools_resnet18/seed0/pretrain: a
    # relative path is read from the runs folder, an absolute one as given): the pipeline checks that they hold this
    # config's network (model keys, input channels; another image size is allowed) before any stage runs, and its
    # pretrain stage checks them instead of training (the paper's benchmarks share the ImageNet pools); the
    # `nws pretrain` command ignores it (pipeline/reuse.py)
    reuse: str | None = None
    epochs: int = Field(160, ge=1)
    batch_size: int = Field(2048, ge=1)  # global: micro × accumulation × world size, whatever the world size
    micro_batch: int | None = Field(None, ge=1)  # per rank and step; None = batch_size / world size
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(4e-5, ge=0)
    # epochs where lr is multiplied by gamma; a value below 1 is a fraction of `epochs` (0.75 of 12 = epoch 9)
    milestones: list[int | float] = Field(default_factory=lambda: [100])
    gamma: float = Field(0.1, gt=0)
    beta: float = Field(0.5, ge=0)  # weight of the summed Eq. 2 terms
    # BatchNorm statistics over the global batch (all ranks) rather than each rank's share, so that W ranks train
    # the network of 1 rank (pretrain/global_bn.py); off = the usual DDP BatchNorm (per-rank statistics)
    sync_batchnorm: bool = False
    # bf16 = torch autocast through DeepSpeed (BatchNorm stays fp32); auto = bf16 where the device computes it
    # natively (pretrain.engine.native_bf16), else fp32: on a CPU without bf16 instructions autocast emulates it
    precision: Literal["auto", "bf16", "fp32"] = "bf16"
    zero_stage: int = Field(1, ge=0, le=3)
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm; None = no clipping
    pool_init: Literal["normal", "kmeans", "sample"] = "kmeans"  # normal = the paper's random pools (see above)
    warm_start: str | None = None  # plain_backbone.safetensors whose kernels seed the pools (pool_init kmeans)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # micro-batches per rank over which the final NWS network's BatchNorm statistics are re-estimated (0 = keep the
    # running averages of training)
    recalibrate_bn: int = Field(64, ge=0)
    health: HealthConfig = Field(default_factory=HealthConfig)
    allow_degenerate: bool = False  # keep (and hand on) outputs the health check finds degenerate
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
        for m in self.milestones:
            if m <= 0 or (isinstance(m, float) and m >= 1):
                raise ValueError(f"a milestone is an epoch (an integer >= 1) or a fraction of the epochs in (0, 1), "
                                 f"got {m}")
        epochs = self.milestone_epochs()
        if sorted(epochs) != epochs:
            raise ValueError(f"milestones must be increasing, got {self.milestones} (epochs {epochs})")
        return self

    def milestone_epochs(self) -> list[int]:
        """The milestones as epochs: a fraction f of the run is epoch round(f × epochs)."""
        return [m if isinstance(m, int) else round(m * self.epochs) for m in self.milestones]

    def kinds(self) -> list[str]:
        return ["nws", "plain"] if self.kind == "both" else [self.kind]
