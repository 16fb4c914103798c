"""Sequential fine-tuning: the forgetting lower bound of continual learning (Avalanche's `Naive`, Mammoth's `sgd`;
the "single" model of GEM, Lopez-Paz & Ranzato 2017).

ONE network, starting from the plain pretrained backbone (as Finetune, seed 004_ §5.3), is fine-tuned on task
after task, all weights trained, with one fresh head per task (multi-head task-incremental learning). Nothing
protects an earlier task: when task t trains, the backbone that tasks < t were learned with moves, and since every
accuracy is measured on the model rebuilt from the stored files (DESIGN §5), row t of the accuracy matrix
evaluates task j <= t with the CURRENT backbone and head j. Forgetting and BWT are what that drift costs; Finetune
(one whole network stored per task) is the opposite bound, with none.

Storage: shared, counted once: `backbone.safetensors`, every tensor of the network but the head (convolutions,
BatchNorm parameters and statistics), overwritten after every task. It is written as PackNet writes its shared
files (incremental.stored): staged beside the old one, recorded by the task's seal and promoted after it, so a run
killed anywhere while storing a task resumes to the same files. Per task: `head.safetensors` (`fc.*`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from incremental.methods import Method
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._masked_net import HEAD
from incremental.stored import StoredTaskError, is_sealed, staged_path
from nws.io import load_tensors, save_tensors

BACKBONE = "backbone.safetensors"
HEAD_FILE = "head.safetensors"


def is_head(key: str) -> bool:
    return key.split(".", 1)[0] == HEAD


def split(net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone, head) tensors of the state dict."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return ({k: v for k, v in state.items() if not is_head(k)}, {k: v for k, v in state.items() if is_head(k)})


class Sequential(Method):
    name = "sequential"

    @property
    def backbone_path(self) -> Path:
        return self.ctx.method_dir / BACKBONE

    def prepare(self) -> None:
        """Before any task is stored, the shared backbone is the plain pretrained one."""
        check_plain(self.ctx)
        if any(is_sealed(self.ctx.task_dir(t)) for t in range(len(self.ctx.tasks))):
            return
        save_tensors(self.backbone_path, split(load_plain(self.ctx, 1))[0],
                     metadata={"content": "shared backbone", "tasks": "0"})

    def shared_files(self) -> dict[str, list[Path]]:
        return {"backbone": [self.backbone_path]}

    def assemble(self, t: int, head: dict[str, torch.Tensor], source: Path) -> nn.Module:
        """Task t's network: the stored backbone (as it is now) with `head` (strict: every key, every shape)."""
        net = self.ctx.cfg.model.build(self.ctx.tasks[t].num_classes)
        try:
            net.load_state_dict({**load_tensors(self.backbone_path), **head})
        except RuntimeError as e:
            raise StoredTaskError(f"{self.backbone_path} + {source}: do not match the configured network: {e}"
                                  ) from None
        return net

    def setup_task(self, t: int) -> nn.Module:
        """The backbone after task t-1 (the plain one for task 0) with a fresh head drawn as Finetune's is."""
        fresh = load_plain(self.ctx, self.ctx.tasks[t].num_classes)
        return self.assemble(t, split(fresh)[1], self.backbone_path)

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Task t's head into its folder; the trained backbone staged as the new shared backbone (the loop promotes
        it once the task is sealed, incremental.stored)."""
        backbone, head = split(model)
        save_tensors(folder / HEAD_FILE, head, metadata={"task": self.ctx.tasks[t].name,
                                                         "num_classes": str(self.ctx.tasks[t].num_classes)})
        save_tensors(staged_path(self.backbone_path), backbone,
                     metadata={"content": "shared backbone", "tasks": str(t + 1)})

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        return self.assemble(t, load_tensors(folder / HEAD_FILE), folder / HEAD_FILE)

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"head": [folder / HEAD_FILE]}


METHOD = Sequential
