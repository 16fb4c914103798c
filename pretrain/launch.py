"""Where this process sits in the job: rank, world size and rendezvous, from whichever launcher started it.

Four ways to start pretraining, one code path: a plain `python -m pipeline pretrain` (a 1-rank group of its own),
`deepspeed --num_gpus N` or torchrun (they export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT), a hostfile
(the deepspeed launcher again), or Slurm `srun` with one task per device, where the ranks come from SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID and the rendezvous host is the first node of SLURM_JOB_NODELIST
(notes/infrastructure.md §3: deepspeed.init_distributed reads only the five torch variables).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Mapping

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def slurm_hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames` expands Slurm's compressed node list (node[01-04]); a plain name needs no call."""
    if not any(c in nodelist for c in "[],"):
        return [nodelist]
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol ({e}); "
                           "export MASTER_ADDR yourself") from None
    return out.stdout.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_dist_env(env: Mapping[str, str],
                     hostnames: Callable[[str], list[str]] = slurm_hostnames) -> dict[str, str]:
    """The five rendezvous variables for this process: a launcher's own values win, then Slurm's, then a
    single-process group on localhost."""
    if "RANK" in env and "WORLD_SIZE" in env:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing and int(env["WORLD_SIZE"]) > 1:
            raise RuntimeError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not: start the ranks with "
                               "torchrun, the deepspeed launcher or srun")
        return {"RANK": env["RANK"], "WORLD_SIZE": env["WORLD_SIZE"],
                "LOCAL_RANK": env.get("LOCAL_RANK", env["RANK"]),
                "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"), "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        addr = env.get("MASTER_ADDR") or hostnames(env["SLURM_JOB_NODELIST"])[0]
        # every task derives the same port from the job id, so no task has to tell the others
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_ADDR": addr, "MASTER_PORT": port}
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}


def init_distributed() -> tuple[int, int]:
    """Export the rendezvous variables and join the process group (gloo on CPU, the accelerator's backend
    otherwise); returns (rank, world size)."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.update(resolve_dist_env(os.environ))
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = deepspeed.get_accelerator().communication_backend_name()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size()
