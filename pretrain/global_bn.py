"""BatchNorm over the global batch of all ranks (`pretrain.sync_batchnorm`), on any device and backend.

With plain BatchNorm every rank normalises its own share of the global batch, so a run on W ranks trains another
network than the same global batch on 1 rank (batch statistics of B/W images instead of B). torch's SyncBatchNorm
fixes that on GPUs only; this one works with gloo on CPU too: per layer, one autograd-aware all-reduce of the
per-channel sums and counts gives the global mean, a second one the global variance (two passes, so no
E[x²] - E[x]² cancellation). Backward all-reduces the gradients of those sums, which makes each rank's gradient the
share of the 1-rank gradient that DeepSpeed's average over ranks then completes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of every rank's x is Σ_ranks dy (each rank's loss depends on every rank's x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        dx = dy.clone()
        dist.all_reduce(dx)
        return dx


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are those of the global batch; identical to it in eval mode and
    on one rank. Same parameters and buffers, so state dicts and checkpoints do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()  # statistics in fp32 under bf16 autocast, as the native CPU/GPU kernels accumulate
        local = torch.cat([xf.sum((0, 2, 3)), xf.new_full((1,), xf.numel() / c)])
        total = _SumOverRanks.apply(local)
        count = total[c]
        mean = total[:c] / count
        centred = xf - mean.view(1, c, 1, 1)
        var = _SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * count / (count - 1), alpha=m)  # unbiased, as torch's
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def use_global_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every nn.BatchNorm2d of `model` for a GlobalBatchNorm2d holding the same tensors (in place)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device
                                   if child.running_mean is not None else None)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            use_global_batchnorm(child)
    return model
