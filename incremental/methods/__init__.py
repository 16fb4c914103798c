"""The plug-in interface of the task loop: what a continual-learning method must say, and nothing more.

The loop (incremental.loop) owns data, optimisation, checkpoints, evaluation and metrics. A method owns its network:
how task t's model starts (`setup_task`), which tensors train (`param_groups`), its extra loss and step hooks,
how the task is stored (`write_artifact`), how the task model comes back from those files alone (`rebuild`), and
which stored files are its memory (`artifact_files`, `shared_files`). Every reported accuracy is measured on
`rebuild`'s output (DESIGN §5), so a method cannot be evaluated on anything it did not store.

A method is the module `incremental/methods/<name>.py` exposing `METHOD`, a Method subclass: adding a baseline
is adding one file. What only methods use lives beside them as private helpers, `_<name>.py` (never listed as a
method): named for its method when one method uses it (`_nws_net`, `_hat_gates`, `_dst_sparse`), for what it is
when several share it (`_backbone`, `_masked_net`, `_frozen_backbone`). Methods import the files they store and read
(incremental.stored, incremental.masks) and the schedule, never the loop; the loop finds a method by name here.
Method-specific options come from `incremental.options.<name>` and are validated by the method's `Options` schema
(unknown keys are errors).

Recipes (issue 15): a baseline's own paper and code train it with their own optimizer (SupSup, DST, Piggyback, KSM:
Adam with their lrs), while seed 004_ §5.4 and its App. 5 train every method with one SGD recipe ("the same common
hyperparameters": lr, batch size, epochs, optimizer, scheduler) and keep only method-specific hyperparameters
(KSM's mask lr) at their defaults. `incremental.recipe` picks one for every method, `options.<name>.recipe` for one:
"official" calls the method's `official_optimizer`, "paper" the shared SGD over the method's `param_groups` (a
method whose groups carry their own lrs drops all but the paper's method-specific ones under "paper"). Option keys
of a method's official recipe (`recipe_keys`, e.g. SupSup's lr) are refused with "paper", which replaces them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from base.config import ConfigError, Section, validate
from data_prep.tasks import Task
from incremental import schedule
from incremental.method_names import available as available  # the registry: the files of this package
from incremental.method_names import unknown
from incremental.schedule import TaskSchedule


def sgd(groups: list[dict], inc) -> torch.optim.Optimizer:
    """The paper's SGD (§5.4): lr, momentum, Nesterov and weight decay from the incremental config (recipe "paper",
    and the official recipe of the methods whose own code trains with it)."""
    return torch.optim.SGD(groups, lr=inc.lr, momentum=inc.momentum, nesterov=inc.nesterov and inc.momentum > 0,
                           weight_decay=inc.weight_decay)


class MethodOptions(Section):
    """Options every method takes (the base of each method's `Options`): `recipe` overrides incremental.recipe for
    this method alone (None: incremental.recipe)."""

    recipe: Literal["official", "paper"] | None = None


class NoOptions(MethodOptions):
    """A method without options of its own."""


@dataclass
class Context:
    """What a method may read: the experiment config, the data and pretrain outputs, its own folder, the tasks, and
    `schedule`: the resolved schedule (incremental.schedule.TaskSchedule: steps, epochs, steps_per_epoch, milestones
    in steps, lr_factor(step), reach()) of the task being trained, set by the loop before `setup_task` of every task
    it trains. A method derives its schedule-dependent settings from it, never from incremental.epochs/milestones,
    which a step budget or min_steps may override per task; `schedule_for(t)` gives any task's."""

    cfg: Any  # the Experiment (sections name, seeds, data, model, pretrain, incremental)
    data_dir: Path
    pretrain_dir: Path
    method_dir: Path
    tasks: list[Task]
    options: Section
    schedule: TaskSchedule | None = None
    extra_epochs: int = 0  # epochs every task trains after its budget, set by the method (PackNet's retraining)

    def task_dir(self, t: int) -> Path:
        """`<out>/<method>/task{t:02d}/` (tasks named `taskNN` by the data stage) or `task{t:02d}_<name>/` (tasks
        with a name of their own): the folder of task t's artifact. A folder `task{t:02d}_task{t:02d}/`, the name
        runs made before issue 19 gave every task, is still found, so those runs resume and keep their tasks."""
        name, short = self.tasks[t].name, f"task{t:02d}"
        if name != short:
            return self.method_dir / f"{short}_{name}"
        old = self.method_dir / f"{short}_{name}"
        return old if old.is_dir() else self.method_dir / short

    def schedule_for(self, t: int) -> TaskSchedule:
        """Task t's schedule from its training-set size and the config (the one `schedule` holds while t trains)."""
        return schedule.for_task(self, t)


class Method(ABC):
    """Base of every method. Hooks have no-op defaults; the four abstract methods are the minimum."""

    name: ClassVar[str]
    Options: ClassVar[type[Section]] = NoOptions
    # incremental settings this method does not read: changing them keeps its stored tasks (NWS reads them all)
    # ("recipe": the paper's SGD is the official optimizer of the methods that keep the base `official_optimizer`)
    ignores: ClassVar[tuple[str, ...]] = ("beta", "head", "codec", "recipe")
    # option keys that belong to the method's official optimizer recipe: refused under recipe "paper"
    recipe_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.opts = ctx.options
        self.inc = ctx.cfg.incremental
        self.recipe: str = self.opts.recipe or self.inc.recipe  # every Options is a MethodOptions
        self.optimizer: torch.optim.Optimizer | None = None  # the current task's (make_optimizer)
        clash = sorted(k for k in self.recipe_keys if k in self.opts.model_fields_set)
        if self.recipe == "paper" and clash:
            where = f"incremental.options.{self.name}.recipe" if self.opts.recipe else "incremental.recipe"
            raise ConfigError(f"incremental.options.{self.name}: {', '.join(clash)} belong to {self.name}'s official "
                              f"recipe, but {where} is 'paper' (the shared SGD of seed 004_ §5.4 replaces them); "
                              "drop them or use recipe: official")

    def prepare(self) -> None:
        """Once per run, on the main process: check the pretrain outputs and put the shared files (stored once
        for all tasks, e.g. NWS pools) into the method folder. Must be idempotent (runs again on resume)."""
        return None

    def shared_files(self) -> dict[str, list[Path]]:
        """{memory component: files stored once for all tasks} (read by `rebuild`, counted once)."""
        return {}

    @abstractmethod
    def setup_task(self, t: int) -> nn.Module:
        """Task t's network, ready to train (on the CPU; the loop moves and wraps it). Deterministic given the
        files already stored and the torch seed the loop sets, so a resumed task rebuilds the same structure."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups; a group may carry its own "lr" (scaled by the schedule like the rest)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The task's optimizer under the method's recipe (module docstring), kept as `self.optimizer`: "paper" is
        the shared SGD (§5.4: lr, momentum, Nesterov, weight decay of incremental; a group's own "lr" stays), else
        `official_optimizer`. The loop scales every group's initial lr by the task's schedule
        (`ctx.schedule.lr_factor(step)`, set before every step)."""
        self.optimizer = sgd(groups, self.inc) if self.recipe == "paper" else self.official_optimizer(groups)
        return self.optimizer

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The optimizer of the method's own paper and code; by default the paper's SGD (NWS, Finetune, PackNet's
        official SGD with momentum). SupSup, DST, Piggyback and KSM return their Adam."""
        return sgd(groups, self.inc)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Added to the cross-entropy after each forward (NWS: beta × Σ Eq. 2 terms)."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """After backward, before the optimizer step (e.g. zero the gradients of weights other tasks own)."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """After each optimizer step (e.g. re-apply masks, prune/regrow every k steps)."""
        return None

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """After each epoch, before its checkpoint (e.g. prune at a given epoch, then retrain)."""
        return None

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Extra method state (tensors) the epoch checkpoint must hold beyond the model and the optimizer."""
        return {}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `checkpoint_state` returned (a resumed task)."""
        return None

    @abstractmethod
    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Store task t (the trained, unwrapped model) in `folder`; update shared files if the method has any."""

    @abstractmethod
    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        """Task t's inference network from the stored files alone (its folder + the shared files), on the CPU.
        `verified`: the caller has just checked the folder and the shared files against stored.json and shared.json
        (incremental.stored; the loop's evaluation, task inference), so checksums a method keeps of its own (NWS's
        artifact.json) are not computed again: one evaluation hashes every byte once. Without it a method checks
        what it can."""

    @abstractmethod
    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        """{memory component: files of this task's artifact} (the loop adds its own checksum file as metadata)."""

    def task_report(self, t: int, folder: Path) -> dict:
        """Per-task analysis read from the stored files (NWS: KUR, layer sparsity); JSON-serialisable."""
        return {}

    def run_report(self, reports: list[dict]) -> dict:
        """Extra keys of metrics.json, from the task reports in task order."""
        return {}

    def superposition(self, tasks: list[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """f(alphas, x) -> logits of one network computing with the stored models of `tasks` mixed by `alphas`, for
        task inference by the gradient of the output entropy in alphas (SupSup's one-shot rule,
        incremental.task_inference); None (the default): the method cannot superpose its tasks, and only the rules
        over rebuilt task models apply."""
        return None


def get_method(name: str) -> type[Method]:
    """The Method class of `incremental/methods/<name>.py` (its `METHOD`)."""
    why = unknown([name])
    if why:
        raise ConfigError(why)
    module = importlib.import_module(f"{__name__}.{name}")
    cls = getattr(module, "METHOD", None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{module.__file__}: METHOD must be a subclass of incremental.methods.Method")
    return cls


def make_method(name: str, cfg, data_dir: Path, pretrain_dir: Path, method_dir: Path, tasks: list[Task]) -> Method:
    """Instantiate method `name` with its options validated (errors name `incremental.options.<name>`)."""
    cls = get_method(name)
    options = validate(cls.Options, cfg.incremental.options.get(name, {}), source=f"incremental.options.{name}")
    return cls(Context(cfg=cfg, data_dir=Path(data_dir), pretrain_dir=Path(pretrain_dir),
                       method_dir=Path(method_dir), tasks=tasks, options=options))
