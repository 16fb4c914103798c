"""Pool distillation (seed 004_ Eq. 3/4, §4.2): during pretraining every pool kernel moves toward the temporary
kernels currently assigned to it.

Eq. 4 minimises ||sg[W] - NWS(W; M)||² over the pool. As in VQ-VAE and the official code (notes §1.1) this is done
by an exponential moving average rather than by gradient: per pool kernel j,
    N_j <- d N_j + (1 - d) n_j,     m_j <- d m_j + (1 - d) Σ_{w assigned to j} w,     M_j = m_j / N_j (smoothed),
with decay d = 0.99 and n_j the number of temporary kernels assigned to j in the step.

Two fixes over the official code: N starts at 1 (not 0), so kernels that are not chosen at the first step stay where
they are instead of being blown up to ~1e5 × their scale; and pool kernels that stay unused ("dead") are restarted
on randomly chosen temporary kernels, which the official code never does. Restarts must come often enough for the
run at hand: `restart_period` derives their period from the run's length (issue 14: a 30-step run with restarts
every 50 steps never restarted a pool kernel).

The statistics of a step (which pool kernel each temporary kernel is assigned to, and their sums) depend on W and M
only, never on the batch: every micro-batch of a step and every data-parallel rank (W and M are replicated) sees
the very same ones. So a step uses the statistics of its latest forward, needs no communication, and gives the same
pools at any world size and any gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nws.convert import nws_layers
from nws.layers import NWSLayer


def restart_period(total_steps: int, decay: float = 0.99) -> int:
    """Optimizer steps between dead-kernel restarts for a run of `total_steps`: ten restarts a run, and never more
    than the EMA's memory 1 / (1 - decay) apart (100 steps at 0.99; after that long unused, a kernel's count has
    fallen to 1/e of what it was and it will not come back by itself). 30 steps -> 3, 264 -> 26, 100k -> 100."""
    return max(1, min(total_steps // 10, round(1 / (1 - decay))))


@dataclass
class _LayerState:
    cluster_size: torch.Tensor  # N_j, EMA of the assignment counts
    embed_sum: torch.Tensor  # m_j, EMA of the sums of assigned kernels
    counts: torch.Tensor  # n_j of the latest forward
    sums: torch.Tensor  # Σ of the temporary kernels assigned to j in the latest forward


class PoolDistiller:
    """Attaches to every NWS layer of `model` (switching them to `distill` mode) and updates the pools on `step()`,
    which the training loop calls once per optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.99, eps: float = 1e-5, restart_every: int = 100,
                 dead_usage: float = 1e-2, seed: int = 0):
        self.decay, self.eps = decay, eps
        self.restart_every, self.dead_usage, self.seed = restart_every, dead_usage, seed
        self.layers: dict[str, NWSLayer] = dict(nws_layers(model))
        self.names = {id(layer): name for name, layer in self.layers.items()}
        self.state: dict[str, _LayerState] = {}
        self.restarts = {name: 0 for name in self.layers}
        self.dead = {name: 0 for name in self.layers}  # pool kernels under dead_usage after the latest update
        self.steps = 0
        for name, layer in self.layers.items():
            pool = layer.pool
            self.state[name] = _LayerState(
                cluster_size=torch.ones(pool.shape[0], device=pool.device),
                embed_sum=pool.detach().clone().float(),
                counts=torch.zeros(pool.shape[0], device=pool.device),
                sums=torch.zeros_like(pool, dtype=torch.float32),
            )
            layer.set_mode("distill")
            layer.distill_hook = self._accumulate

    def detach(self):
        for layer in self.layers.values():
            layer.distill_hook = None

    @torch.no_grad()
    def _accumulate(self, layer: NWSLayer, flat: torch.Tensor, idx: torch.Tensor):
        """Record the assignment statistics of this forward (they replace those of an earlier forward of the same
        step, which are identical: see the module docstring)."""
        st = self.state[self.names[id(layer)]]
        st.counts.copy_(torch.bincount(idx, minlength=st.counts.numel()))
        st.sums.zero_().index_add_(0, idx, flat.float())

    def discard(self):
        """Forget the statistics of the pending step (a step skipped for a non-finite loss updates no pool)."""
        for st in self.state.values():
            st.counts.zero_()
            st.sums.zero_()

    @torch.no_grad()
    def step(self) -> dict[str, int]:
        """Apply the EMA update of Eq. 4 to every pool; returns the dead-kernel restarts of this step per layer."""
        self.steps += 1
        restarted = {}
        for name, layer in self.layers.items():
            st = self.state[name]
            if st.counts.sum() == 0:  # no forward since the last step
                continue
            st.cluster_size.mul_(self.decay).add_(st.counts, alpha=1 - self.decay)
            st.embed_sum.mul_(self.decay).add_(st.sums, alpha=1 - self.decay)
            total = st.cluster_size.sum()
            smoothed = (st.cluster_size + self.eps) / (total + st.cluster_size.numel() * self.eps) * total
            layer.pool.copy_(st.embed_sum / smoothed.unsqueeze(1))
            self.dead[name] = int((st.cluster_size < self.dead_usage).sum())
            restarted[name] = self._restart_dead(name, layer, st) if self.steps % self.restart_every == 0 else 0
            st.counts.zero_()
            st.sums.zero_()
        return restarted

    def dead_share(self) -> dict[str, float]:
        """Per layer, the share of pool kernels whose EMA usage was under `dead_usage` after the latest update (before
        that step's restarts, which would hide them)."""
        return {name: self.dead[name] / layer.pool_size for name, layer in self.layers.items()}

    def _restart_dead(self, name: str, layer: NWSLayer, st: _LayerState) -> int:
        dead = (st.cluster_size < self.dead_usage).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = layer.flat_weight().detach().float()
        # the same generator state on every rank (and W is replicated), so all ranks restart identically
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        picks = torch.randint(flat.shape[0], (dead.numel(),), generator=gen).to(flat.device)
        layer.pool[dead] = flat[picks]
        st.embed_sum[dead] = flat[picks]
        st.cluster_size[dead] = 1.0
        self.restarts[name] += dead.numel()
        return int(dead.numel())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready): EMA state per layer, restart counts and the step counter."""
        out = {"steps": torch.tensor(self.steps)}
        for name, st in self.state.items():
            out[f"{name}.cluster_size"] = st.cluster_size.detach().cpu().clone()
            out[f"{name}.embed_sum"] = st.embed_sum.detach().cpu().clone()
            out[f"{name}.restarts"] = torch.tensor(self.restarts[name])
            out[f"{name}.dead"] = torch.tensor(self.dead[name])
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]):
        self.steps = int(state["steps"])
        for name, st in self.state.items():
            for key in ("cluster_size", "embed_sum"):
                value = state.get(f"{name}.{key}")
                if value is None or value.shape != getattr(st, key).shape:
                    raise ValueError(f"distiller state for layer {name!r} is missing or has the wrong shape ({key})")
                getattr(st, key).copy_(value)
            self.restarts[name] = int(state[f"{name}.restarts"])
            self.dead[name] = int(state.get(f"{name}.dead", 0))  # absent in checkpoints written before it existed
