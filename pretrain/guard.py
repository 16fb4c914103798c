"""The non-finite guard: a step whose loss is not finite is skipped and counted; too many in a row stop the run with
the names of the terms that went bad (DESIGN §5 "Numerics"; the official code's known NaN issue, notes §1.3).

The loss has one cross-entropy term and one Eq. 2 term per NWS layer. All ranks must agree on skipping, otherwise
the ranks that step would wait forever in the gradient all-reduce of the ones that skip: the per-term flags are
all-reduced (max) before anything is decided. A skipped step leaves no trace: no backward, no optimizer step, no
pool update (the distiller's pending statistics of that forward are dropped), and BatchNorm running statistics are
put back as they were before its forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from nws import exits


class NonFiniteLoss(RuntimeError):
    """Raised after `max_consecutive` skipped steps in a row."""

    EXIT_CODE = exits.NON_FINITE


class NonFiniteGuard:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    @staticmethod
    def bad_terms(terms: dict[str, torch.Tensor]) -> list[str]:
        """Names of the terms that are non-finite on any rank (one small all-reduce, one host sync)."""
        flags = (~torch.isfinite(torch.stack([t.detach().float().reshape(()) for t in terms.values()]))).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if not bool(flags.any()):
            return []
        return [name for name, bad in zip(terms, flags.tolist(), strict=True) if bad]

    def ok(self) -> None:
        self.consecutive = 0

    def skip(self, bad: list[str], step: int) -> str:
        """Count a skipped step; raise NonFiniteLoss when it is the K-th in a row. Returns the log message."""
        self.skipped += 1
        self.consecutive += 1
        message = f"non-finite loss at step {step}: {', '.join(bad)} (step skipped)"
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLoss(f"{self.consecutive} consecutive non-finite steps, the last at step {step}: "
                                f"non-finite term(s) {', '.join(bad)}; stopping (the last checkpoint is intact: "
                                "lower the lr, enable grad_clip or check the data, then run again)")
        return message


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def snapshot(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    return [b.detach().clone() for b in buffers]


@torch.no_grad()
def restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for b, s in zip(buffers, saved, strict=True):
        b.copy_(s)


@torch.no_grad()
def drop_pending_pool_statistics(distiller) -> None:
    """Forget what the skipped forward accumulated for the EMA pool update (nws.distill.PoolDistiller)."""
    distiller.discard()
