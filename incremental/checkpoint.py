"""Epoch checkpoints of the task being trained (issue 5: "a task interrupted mid-way continues from its last epoch
checkpoint"), written with accelerate's `save_state` (model, optimizer, RNG states of every process).

Layout: `<method>/checkpoints/task{t:02d}/epoch{e:03d}/` holds the state after e finished epochs (plus the
method's extra tensors in `method_state.safetensors`); `latest.json` names the newest complete one and is written
only after that folder is complete, so an interruption during a save leaves the previous checkpoint in force (and
a save that meets a full disk removes its half-written folder).
The task's checkpoints are deleted once its artifact is sealed.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from base.layout import CHECKPOINTS
from nws.disk import DiskFull, writing
from nws.io import atomic_write_json, load_tensors, read_json, save_tensors

LATEST = "latest.json"
METHOD_STATE = "method_state.safetensors"


@dataclass
class Progress:
    """Where a task's training stands: finished epochs, optimizer steps, skipped steps, training seconds."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0
    seconds: float = 0.0
    last_loss: float | None = None


def task_checkpoints(method_dir: Path, t: int) -> Path:
    return Path(method_dir) / CHECKPOINTS / f"task{t:02d}"


def save(accelerator, root: Path, progress: Progress, method_state: dict) -> None:
    """Checkpoint after `progress.epoch` epochs (call on every process)."""
    folder = Path(root) / f"epoch{progress.epoch:03d}"
    accelerator.wait_for_everyone()
    try:
        with writing(folder):
            accelerator.save_state(str(folder), safe_serialization=True)
        if accelerator.is_main_process and method_state:
            save_tensors(folder / METHOD_STATE, method_state)
    except DiskFull:  # the half-written folder is not counted (latest.json does not name it): free its space
        if not (Path(root) / LATEST).is_file() or read_json(Path(root) / LATEST).get("folder") != folder.name:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        atomic_write_json(Path(root) / LATEST, {"folder": folder.name, **asdict(progress)})
        for old in Path(root).glob("epoch*"):
            if old.is_dir() and old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def restore(accelerator, root: Path) -> tuple[Progress, dict]:
    """(progress, method state) of the latest checkpoint loaded into the prepared objects; (Progress(), {}) when
    the task has none."""
    latest = Path(root) / LATEST
    if not latest.is_file():
        return Progress(), {}
    doc = read_json(latest)
    folder = Path(root) / doc.pop("folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"{latest} names {folder}, which does not exist; delete {root} to restart the task")
    accelerator.load_state(str(folder))
    state = load_tensors(folder / METHOD_STATE) if (folder / METHOD_STATE).is_file() else {}
    return Progress(**doc), state


def clear(root: Path) -> None:
    """Delete a task's checkpoints (and the checkpoints folder once it is empty)."""
    shutil.rmtree(root, ignore_errors=True)
    parent = Path(root).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
