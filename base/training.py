"""What pretraining (pretrain.loop) and the task loop (incremental.train) both do around a training step, written once
(issue 18): the paper's step learning-rate schedule, the non-finite guard, and BatchNorm statistics averaged over ranks.

- Schedule: MultiStepLR as a function (seed 004_ §5.4: lr ÷10 at the milestones), so a resumed run or another rank
  needs no scheduler state. Pretraining counts epochs, the task loop optimizer steps; the function does not care.
- Non-finite guard (DESIGN §5 "Numerics"; the official code's known NaN issue, notes §1.3): a step whose loss is not
  finite is skipped and counted, too many in a row stop the run. All ranks must agree on skipping, otherwise the
  ranks that step wait forever in the gradient all-reduce of the ones that skip: the per-term flags are all-reduced
  (max) before anything is decided. A skipped forward leaves no trace in the BatchNorm statistics (snapshot/restore).
  What a stage prints and what else it forgets (NWS pretraining's pending pool statistics) stays in the stage.
- BatchNorm sync: each rank normalised only its share of the batch, so the running statistics are averaged before a
  checkpoint or a stored task, and every rank holds the same network.

torch and torch.distributed only (and nws.exits for the exit code): no stage is imported.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from nws import exits


def lr_factor(t: int, milestones, gamma: float) -> float:
    """gamma ** (milestones reached at t): MultiStepLR's multiplier on the initial lr, t and the milestones in the
    same unit (epochs or optimizer steps)."""
    return gamma ** sum(t >= m for m in milestones)


def set_lr(optimizer, lr: float) -> None:
    """Every parameter group at one lr (pretraining: one group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def scale_lr(optimizer, factor: float) -> None:
    """Every parameter group at its own `initial_lr` × factor (the task loop: methods give groups their own lr)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


class NonFiniteLoss(RuntimeError):
    """Too many consecutive non-finite losses: the run stops instead of training on garbage."""

    EXIT_CODE = exits.NON_FINITE


class NonFiniteGuard:
    """Counts skipped steps (`skipped`, in all; `consecutive`, since the last finite one); the stage says what it
    logs and raises NonFiniteLoss when `skip()` answers that the run must stop."""

    def __init__(self, max_consecutive: int, skipped: int = 0):
        self.max_consecutive = max_consecutive
        self.skipped = skipped
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

    def skip(self) -> bool:
        """Count a skipped step; whether it is the `max_consecutive`-th in a row."""
        self.skipped += 1
        self.consecutive += 1
        return self.consecutive >= self.max_consecutive


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def snapshot(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    return [b.detach().clone() for b in buffers]


@torch.no_grad()
def restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for b, s in zip(buffers, saved, strict=True):
        b.copy_(s)


def nonfinite_where(model: nn.Module, x: torch.Tensor) -> str:
    """Where a non-finite loss comes from (issue 17: the guard named no layer): the first parameter or buffer
    holding NaN/inf, else the first module whose output on this batch is non-finite (found by running the batch
    again with hooks; BatchNorm statistics are put back), else the loss term itself."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN/inf"
    found: list[str] = []

    def hook(module, args, out, name=""):
        if not found and isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            found.append(name)

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    buffers = [b for _, b in model.named_buffers()]
    saved = snapshot(buffers)
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        restore(buffers, saved)
    return f"first non-finite output at {found[0]}" if found else "every layer's output is finite (the loss term)"


@torch.no_grad()
def sync_batchnorm_statistics(model: nn.Module, world_size: int) -> None:
    """Average the BatchNorm running statistics over ranks (each rank normalised only its share of the batch), so
    every rank, and so the checkpoint or the stored task, holds the same network. Sum, then divide by the world
    size: what accelerate's reduce(..., "mean") computed for the task loop before issue 18, bit for bit."""
    if world_size == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size)
