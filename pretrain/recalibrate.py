"""BatchNorm statistics that match the pretrained NWS network that is handed on (DESIGN §5: every reported accuracy is
measured on the network rebuilt from the stored files, and its BatchNorm statistics are stored with it).

During pool distillation the network the running statistics describe keeps changing in jumps: a temporary kernel
whose nearest pool kernel changes swaps its searched kernel, every step moves the pools (Eq. 4), and restarts move
dead pool kernels onto temporary kernels — also after the last forward of the run. The running averages (momentum
0.1: the last ~10 steps) then describe a mixture of networks, not the one whose indices are stored. On a long run
the last steps change little; on a short one it is what the network is judged by: a 30-step run on 1,400
Fashion-MNIST images scored 10% with its training statistics and 53% with re-estimated ones (issue 14).

So after the last step the searched kernels are frozen and the statistics are re-estimated as the plain average
(momentum None) over training micro-batches, in train mode and without gradients, then averaged over ranks.
"""

from __future__ import annotations

import torch
from torch import nn

import nws


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, device) -> int:
    """Freeze the NWS layers on their current searched kernels and re-estimate every BatchNorm's running mean and
    variance over `batches` (an iterable of (x, y)); returns the number of batches used. The caller averages the
    statistics over ranks (base.training.sync_batchnorm_statistics)."""
    nws.set_mode(model, "frozen")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    used = 0
    for x, _ in batches:
        model(x.to(device))
        used += 1
    model.train(was_training)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    return used
