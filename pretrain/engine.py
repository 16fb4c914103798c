"""The DeepSpeed engine of pretraining: ZeRO stage, bf16 autocast, SGD Nesterov, the paper's schedule, a global batch
that does not depend on the world size (notes/infrastructure.md §3, notes/algorithms.md §1.3).

bf16 uses DeepSpeed's `torch_autocast` section: parameters, buffers and gradients stay fp32 (so BatchNorm works and
the small Eq. 2 gradient survives) while convs and linears run in bf16; the NWS search inside each layer stays fp32
whatever autocast says (nws.search). The learning rate follows
the official MultiStepLR stepped per *epoch*, which DeepSpeed's own scheduler hook (stepped per optimizer step)
cannot express, so it is a plain function applied to the optimizer at each epoch start; it needs no state to resume
(base.training.lr_factor, the task loop's too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from base.training import lr_factor
from pretrain.config import PretrainConfig

# Modules whose gradients DeepSpeed would round to bf16 for the all-reduce: none. In 1×1 and head layers the Eq. 2
# gradient is far smaller than the CE gradient it is added to, and bf16 (8-bit mantissa) drops it from the sum.
BF16_GRAD_MODULES: list[str] = []


@dataclass(frozen=True)
class BatchPlan:
    """global batch = micro batch × gradient accumulation × world size, the invariant DeepSpeed checks."""

    global_batch: int
    micro_batch: int
    accumulation: int
    world_size: int


def batch_plan(cfg: PretrainConfig, world_size: int) -> BatchPlan:
    micro = cfg.micro_batch or cfg.batch_size // world_size
    if micro < 1 or cfg.batch_size % (micro * world_size):
        raise ValueError(f"pretrain.batch_size={cfg.batch_size} is not a multiple of micro_batch ({micro}) × world "
                         f"size ({world_size}); set pretrain.micro_batch so that it divides")
    return BatchPlan(cfg.batch_size, micro, cfg.batch_size // (micro * world_size), world_size)


def lr_at(cfg: PretrainConfig, epoch: int) -> float:
    """MultiStepLR: lr × gamma^(number of milestones reached; fractions of the run resolved to epochs)."""
    return cfg.lr * lr_factor(epoch, cfg.milestone_epochs(), cfg.gamma)


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA device that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16. Elsewhere bf16 autocast is emulated: on a 2-core AMD EPYC (AVX2) a Fashion-MNIST pretraining step of
    configs/fmnist.yaml took 4.2 s in bf16 and 0.24 s in fp32 (same run otherwise, issue 14's benchmarks)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_of(cfg: PretrainConfig) -> str:
    """The precision a run uses: `cfg.precision`, with `auto` resolved on this machine (native_bf16)."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if native_bf16() else "fp32"


def ds_config(cfg: PretrainConfig, plan: BatchPlan) -> dict:
    config = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch SGD under ZeRO
        "gradient_clipping": cfg.grad_clip or 0.0,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if precision_of(cfg) == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16",
                                    "lower_precision_safe_modules": BF16_GRAD_MODULES}
    return config


# DeepSpeed warnings about choices made here on purpose, which a user cannot act on (issue 19): torch's SGD under
# ZeRO stage 1 is what the paper trains with (zero_allow_untested_optimizer), and the tests check that its ranks
# end with identical pools and the same pools as one rank
EXPECTED_WARNINGS = ("You are using ZeRO with an untested optimizer",)


class _Expected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in EXPECTED_WARNINGS)


def build_engine(model: nn.Module, cfg: PretrainConfig, plan: BatchPlan):
    """(engine, its optimizer): torch SGD Nesterov over every parameter (pools are buffers: never optimised)."""
    import deepspeed
    from deepspeed.utils import logger

    if not any(isinstance(f, _Expected) for f in logger.filters):
        logger.addFilter(_Expected())

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, plan))
    return engine, optimizer
