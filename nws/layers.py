"""NWS layers: a conv or linear layer whose forward uses kernels searched in its own pool (seed 004_ §4.1).

Each layer holds
- the *temporary kernels* W (`weight`, the only trainable tensor of the layer; discarded after a task),
- its *pool* M (`pool`, a buffer of n kernels flattened to d = k*k values; frozen outside pool distillation),
- the *indices* C of the searched kernels (`indices`, one per kernel of W).

Forward in `search`/`distill` mode: K = NWS(W; M) (Eq. 1, nearest pool kernel by L2, exact, fp32), then the
straight-through estimator W + sg[K - W], so the task loss reaches W as if it had been computed with K, and the
Eq. 2 similarity term mean((sg[K] - W)^2) is exposed as `diff`. In `frozen` mode the layer is a plain conv/linear
on the searched kernels pool[indices], with no search cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nws.cache import SearchCache

MODES = ("search", "distill", "frozen")


class NWSLayer(nn.Module):
    """What NWSConv2d and NWSLinear share: pool, indices, search, straight-through weight, Eq. 2 term."""

    weight: nn.Parameter
    pool: torch.Tensor
    indices: torch.Tensor

    def _init_nws(self, num_groups: int, group_dim: int, pool_size: int):
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = pool_size
        self.group_dim = group_dim
        # N(0, 1) pool: the paper's and the official code's random initialisation (notes §1.1)
        self.register_buffer("pool", torch.randn(pool_size, group_dim))
        self.register_buffer("indices", torch.zeros(num_groups, dtype=torch.long))
        self.mode = "search"
        self.diff: torch.Tensor | None = None  # Eq. 2 term of the last forward
        self.distill_hook = None  # set by nws.distill.PoolDistiller: called with (layer, flat W, indices)
        self.search_cache = SearchCache()
        self._searched_from: torch.Tensor | None = None  # the cache's result the indices were last copied from
        self._kernels: torch.Tensor | None = None  # K for those indices

    def __getstate__(self):
        """Copies and pickles leave out what belongs to the last forward or to a training loop: the Eq. 2 term
        (part of an autograd graph) and the distiller's hook."""
        state = self.__dict__.copy()
        state["diff"] = None
        state["distill_hook"] = None
        return state

    @property
    def num_groups(self) -> int:
        return self.indices.numel()

    def flat_weight(self) -> torch.Tensor:
        """W as (number of kernels, d): one row per k×k kernel (or per group of g scalars)."""
        return self.weight.reshape(-1, self.group_dim)

    def searched_weight(self) -> torch.Tensor:
        """K = D(C; M): the searched kernels rebuilt from the indices by lookup, shaped like W."""
        return self.pool[self.indices].reshape(self.weight.shape)

    def forget_search(self):
        """Drop every cached search result (after the pool or the indices were set from outside)."""
        self.search_cache.reset()
        self._searched_from, self._kernels = None, None

    @torch.no_grad()
    def search_(self) -> torch.Tensor:
        """Run Eq. 1 on the current temporary kernels and store the indices; returns them."""
        flat = self.flat_weight().detach()
        idx = self.search_cache(flat, self.pool)  # in distill mode the pool moves: the cache follows it (issue 20)
        if idx is not self._searched_from:  # the cache returns the very same tensor when nothing changed
            self.indices.copy_(idx)
            self._searched_from, self._kernels = idx, None
        if self.mode == "distill":  # the same indices into a pool that moved: K must be looked up again
            self._kernels = None
        return self.indices

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses: K in value, with gradient to W (straight-through, §4.1)."""
        if self.mode == "frozen":
            self.diff = None
            return self.searched_weight().to(self.weight.dtype)
        idx = self.search_()
        if self._kernels is None:  # K = D(C; M) only when some index (or the pool) changed since the last forward
            self._kernels = self.searched_weight()
        kernels = self._kernels
        if self.distill_hook is not None and self.training:
            self.distill_hook(self, self.flat_weight().detach(), idx)
        w = self.weight
        # Eq. 2 similarity term, gradient to W only (the pool is a buffer: K carries no gradient)
        self.diff = F.mse_loss(w.float(), kernels.float())
        # W + sg[K - W], written as K + (W - sg[W]) so that the forward value is exactly K
        return kernels.to(w.dtype) + (w - w.detach())

    def set_mode(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown NWS mode {mode!r}; valid modes: {', '.join(MODES)}")
        if mode == "frozen" and self.mode != "frozen":
            self.search_()  # the frozen layer uses the kernels searched for the current W
        self.mode = mode
        self.forget_search()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool_size={self.pool_size}, group_dim={self.group_dim}, mode={self.mode}"


class NWSConv2d(NWSLayer):
    """nn.Conv2d with NWS kernels: one k×k kernel (k*k values) is one group; a 1×1 kernel is a scalar."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        pool_size: int = 512,
    ):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        nn.init.kaiming_normal_(self.weight)  # the official temporary-kernel init
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_nws(out_channels * (in_channels // groups), kh * kw, pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_plain(self) -> nn.Conv2d:
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, bias=self.bias is not None,
        )
        return _fill_plain(conv, self)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}"
        )


class NWSLinear(NWSLayer):
    """nn.Linear with NWS weights: by default each weight is a scalar group (the official head is a 1×1 conv);
    `group_size` g > 1 groups g consecutive input weights of a row (appendix §1 of seed 001_)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, pool_size: int = 512,
                 group_size: int = 1):
        super().__init__()
        if group_size < 1 or in_features % group_size:
            raise ValueError(f"group_size={group_size} must divide in_features={in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._init_nws(out_features * in_features // group_size, group_size, pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def to_plain(self) -> nn.Linear:
        return _fill_plain(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None), self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"group_size={self.group_size}"


@torch.no_grad()
def _fill_plain(plain: nn.Module, layer: NWSLayer) -> nn.Module:
    """A plain layer holding the searched kernels K (and the float bias, if any)."""
    plain = plain.to(device=layer.weight.device, dtype=layer.weight.dtype)
    plain.weight.copy_(layer.searched_weight())
    if layer.bias is not None:
        plain.bias.copy_(layer.bias)
    return plain
