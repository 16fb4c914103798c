"""Checkpoints that survive SIGKILL: running the same command again resumes from the latest complete one.

One checkpoint is a folder `<dir>/<tag>/` with DeepSpeed's files (weights, buffers — the pools and BatchNorm
statistics are buffers —, optimizer state; every rank writes its own ZeRO shard), `distiller.safetensors` (the EMA
state of the pool update) and `state.json` (where the data loop stands). DeepSpeed's own `latest` file is not used:
`latest.json` is written atomically by rank 0 only after every rank has finished writing, so a run killed while
saving resumes from the previous checkpoint. Tags name the data position (`e0003-b000120`), so two saves never
write into the same folder.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed as dist

from nws.io import atomic_write_json, load_tensors, read_json, save_tensors

LATEST = "latest.json"
STATE = "state.json"
DISTILLER = "distiller.safetensors"


@dataclass
class TrainState:
    """Where training stands: `batch` micro-batches of `epoch` are done; `step` optimizer steps were applied."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    micro: int = 0  # micro-batches seen since the start, skipped ones included
    skipped: int = 0
    images: int = 0  # images the applied steps trained on (all ranks)
    seconds: float = 0.0  # training wall time, summed over resumed runs
    config_hash: str = ""

    @property
    def tag(self) -> str:
        return f"e{self.epoch:04d}-b{self.batch:06d}"


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, folder: Path, state: TrainState, distiller=None, keep: int = 2, rank: int = 0) -> str:
    """Save on every rank (DeepSpeed needs all of them); returns the tag."""
    folder = Path(folder)
    tag = state.tag
    engine.save_checkpoint(str(folder), tag=tag, client_state={"train_state": asdict(state)}, save_latest=False)
    if rank == 0:
        if distiller is not None:
            save_tensors(folder / tag / DISTILLER, distiller.state_dict())
        atomic_write_json(folder / tag / STATE, asdict(state))
    _barrier()
    if rank == 0:
        atomic_write_json(folder / LATEST, {"tag": tag})
        _prune(folder, keep, tag)
    _barrier()
    return tag


def _prune(folder: Path, keep: int, newest: str) -> None:
    """Remove all but the `keep` newest complete checkpoints (and any half-written folders older than them)."""
    tags = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[:1] == "e" and p.name <= newest)
    for old in tags[:-keep]:
        shutil.rmtree(folder / old, ignore_errors=True)


def latest_tag(folder: Path) -> str | None:
    path = Path(folder) / LATEST
    if not path.is_file():
        return None
    tag = read_json(path).get("tag")
    if not tag or not (Path(folder) / tag / STATE).is_file():
        raise FileNotFoundError(f"{path} names checkpoint {tag!r}, which is missing or incomplete under {folder}")
    return tag


def load(engine, folder: Path, distiller=None) -> TrainState | None:
    """Restore the latest checkpoint into `engine` (and `distiller`); None when there is none yet."""
    folder = Path(folder)
    tag = latest_tag(folder)
    if tag is None:
        return None
    path, _ = engine.load_checkpoint(str(folder), tag=tag)
    if path is None:
        raise FileNotFoundError(f"{folder / tag}: DeepSpeed could not load this checkpoint")
    if distiller is not None:
        distiller.load_state_dict(load_tensors(folder / tag / DISTILLER))
    return TrainState(**read_json(folder / tag / STATE))
