"""Checkpoints that survive SIGKILL: running the same command again resumes from the latest complete one.

One checkpoint is a folder `<dir>/<tag>/` with DeepSpeed's files (weights, buffers — the pools and BatchNorm
statistics are buffers —, optimizer state; every rank writes its own ZeRO shard), `distiller.safetensors` (the EMA
state of the pool update) and `state.json` (where the data loop stands). DeepSpeed's own `latest` file is not used:
`latest.json` is written atomically by rank 0 only after every rank has finished writing, so a run killed while
saving resumes from the previous checkpoint, and a save that meets a full disk removes its half-written folder
(DiskFull). Tags name the data position (`e0003-b000120`), so two saves never write into the same folder.

No pickle runs on the way back in (issue 17: DeepSpeed loads its `.pt` files with `torch.load(weights_only=False)`,
so a crafted file in a checkpoint folder ran code on resume). The engine's checkpoint loader is replaced by one that
reads with `weights_only=True`, allowing only the three DeepSpeed classes its ZeRO files hold (DEEPSPEED_GLOBALS).
A file that is refused or unreadable is named, and the previous complete checkpoint is tried.
"""

from __future__ import annotations

import pickle
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nws import exits
from nws.disk import DiskFull, writing
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


class CheckpointError(RuntimeError):
    """A checkpoint file that is refused (it needs more than tensors and the allowed classes) or cannot be read."""

    EXIT_CODE = exits.CORRUPTED


def deepspeed_globals() -> list:
    """The classes DeepSpeed's ZeRO checkpoint files pickle beside tensors (found by loading bf16 and fp32, stage 1
    checkpoints with weights_only=True); nothing else is constructed when one is read."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location=None):
    """torch.load with weights_only=True and DeepSpeed's classes allowed: the replacement of the engine's loader."""
    try:
        with torch.serialization.safe_globals(deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text:  # the weights-only unpickler met a class or function it does not allow
            what = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
            raise CheckpointError(f"{path}: refused, it holds more than tensors and DeepSpeed's own classes (a "
                                  f"crafted or foreign file; nothing of it ran): {what}") from None
        raise CheckpointError(f"{path}: unreadable (not a torch checkpoint, or truncated)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, folder: Path, state: TrainState, distiller=None, keep: int = 2, rank: int = 0) -> str:
    """Save on every rank (DeepSpeed needs all of them); returns the tag."""
    folder = Path(folder)
    tag = state.tag
    try:
        with writing(folder / tag):  # torch.save says only "unexpected pos" or "iostream error" on a full disk
            engine.save_checkpoint(str(folder), tag=tag, client_state={"train_state": asdict(state)},
                                   save_latest=False)
        if rank == 0:
            if distiller is not None:
                save_tensors(folder / tag / DISTILLER, distiller.state_dict())
            atomic_write_json(folder / tag / STATE, asdict(state))
    except DiskFull:
        _discard(folder, tag)
        raise
    _barrier()
    if rank == 0:
        atomic_write_json(folder / LATEST, {"tag": tag})
        _prune(folder, keep, tag)
    _barrier()
    return tag


def _discard(folder: Path, tag: str) -> None:
    """Remove the half-written checkpoint `tag` (never counted: latest.json does not name it), freeing its space;
    the complete checkpoint latest.json names is kept."""
    latest = folder / LATEST
    if latest.is_file() and read_json(latest).get("tag") == tag:
        return
    shutil.rmtree(folder / tag, ignore_errors=True)


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


def stored_hash(folder: Path) -> str | None:
    """The config hash of the latest checkpoint under `folder` (None when there is none or it cannot be read)."""
    try:
        tag = latest_tag(folder)
        return None if tag is None else read_json(Path(folder) / tag / STATE).get("config_hash")
    except (FileNotFoundError, ValueError, OSError):
        return None


def candidates(folder: Path, newest: str) -> list[str]:
    """`newest`, then the older complete checkpoints (state.json written), newest first."""
    older = sorted((p.name for p in Path(folder).iterdir() if p.is_dir() and p.name[:1] == "e" and p.name < newest
                    and (p / STATE).is_file()), reverse=True)
    return [newest, *older]


def load(engine, folder: Path, distiller=None) -> TrainState | None:
    """Restore the latest readable checkpoint into `engine` (and `distiller`); None when there is none yet. A refused
    or unreadable checkpoint is named on stderr and the previous one is tried; CheckpointError when none loads."""
    folder = Path(folder)
    newest = latest_tag(folder)
    if newest is None:
        return None
    engine.checkpoint_engine.load = safe_load  # no pickle: see the module docstring
    problems = []
    for tag in candidates(folder, newest):
        try:
            path, _ = engine.load_checkpoint(str(folder), tag=tag)
            if path is None:
                raise CheckpointError(f"{folder / tag}: DeepSpeed could not load this checkpoint")
            if distiller is not None:
                try:
                    distiller.load_state_dict(load_tensors(folder / tag / DISTILLER))
                except Exception as e:  # safetensors' own errors name no file
                    raise CheckpointError(f"{folder / tag / DISTILLER}: unreadable ({e})") from None
        except CheckpointError as e:
            problems.append(str(e))
            print(f"[pretrain] warning: {e}; trying the checkpoint before it", file=sys.stderr, flush=True)
            continue
        return TrainState(**read_json(folder / tag / STATE))
    raise CheckpointError("no checkpoint under " + str(folder) + " could be loaded: " + "; ".join(problems)
                          + "; delete the folder to train from the start")
