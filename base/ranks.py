"""Which process of a launched job this is. Every stage runs as one process or as several ranks (accelerate,
deepspeed, torchrun or srun), and only rank 0 locks the output folder, writes the shared files and records runs; the
others compute (the pipeline too: under srun every rank runs `nws pipeline run --only pretrain`, and only rank 0
records). Kept in the base, not in the method library `nws`, because ranks are how the stages are launched."""

from __future__ import annotations

import os


def is_rank_zero() -> bool:
    """Rank 0 of a launcher (RANK) or of srun (SLURM_PROCID), or a plain process: the one that locks and writes."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
