"""Which part of a split each DDP rank reads, and the seeds that make every rank's randomness reproducible.

FFCV and memory deal positions like DistributedSampler (a seeded permutation per epoch, then rank::world);
webdataset deals whole shards instead when there are enough (loaders.wds). For training all ranks are cut to the
same number of samples so DDP steps stay in lock-step; evaluation keeps every sample exactly once.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit arguments, else the initialised torch.distributed group, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
    return rank, world_size


def derive_seed(*parts: int) -> int:
    """One seed from several integers (a base seed and what the stream is for: epoch, rank, worker, task):
    distinct tuples give independent, reproducible streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def rank_share(n: int, rank: int, world: int, shuffle: bool, seed: int, epoch: int, equal: bool) -> np.ndarray:
    """Positions 0..n-1 this rank reads in `epoch`: a permutation seeded by (seed, epoch) (identical on every
    rank), cut to a multiple of `world` when `equal`, then every world-th from `rank`."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if equal:
        order = order[: n // world * world]
    return order[rank::world]
