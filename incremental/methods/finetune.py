"""Finetune (seed 004_ §5.3): the plain pretrained backbone fine-tuned separately for every task, all weights
trained; the task artifact is the whole float network. The paper's upper bound on accuracy and on memory."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from incremental.methods import Method
from incremental.methods._backbone import check_plain, load_plain
from incremental.stored import StoredTaskError
from nws.io import load_tensors, save_tensors

NETWORK = "network.safetensors"


class Finetune(Method):
    name = "finetune"

    def prepare(self) -> None:
        check_plain(self.ctx)

    def setup_task(self, t: int) -> nn.Module:
        return load_plain(self.ctx, self.ctx.tasks[t].num_classes)

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        save_tensors(folder / NETWORK, model.state_dict(), metadata={"task": self.ctx.tasks[t].name,
                                                                     "num_classes": str(self.ctx.tasks[t].num_classes)})

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        net = self.ctx.cfg.model.build(self.ctx.tasks[t].num_classes)
        try:
            net.load_state_dict(load_tensors(folder / NETWORK))
        except RuntimeError as e:
            raise StoredTaskError(f"{folder / NETWORK}: does not match the configured network: {e}") from None
        return net

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"network": [folder / NETWORK]}


METHOD = Finetune
