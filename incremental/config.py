"""The `incremental` section of an experiment config: the task loop every method shares (seed 004_ §5.4).

Defaults are the paper's common hyperparameters (§5.4, Split-CIFAR-100): SGD momentum 0.9, weight decay 1e-5,
lr 0.01 divided by 10 at epochs 50 and 80, 100 epochs, batch 32; beta 0.5 (0.1 for CUB-to-Sketches). The official
code adds Nesterov and weight decay 4e-5 (notes/algorithms.md §1.4); both are settable. Options that only one method
reads live under `options.<method>` and are validated by that method's own schema (incremental.methods).

The budget of a task (issue 14, incremental.schedule): `epochs` as in the paper, or `steps` (optimizer steps; the
epochs follow from each task's size), raised for a small task to `min_steps`; `milestones` are epochs (integers)
or fractions of the task's steps (numbers in (0, 1), e.g. the paper's [0.5, 0.8]). `steps` and `min_steps` are
opt-in: left at their defaults they are not part of the resolved config, so a config written before they existed
resolves, trains and hashes (stored runs, pipeline stage keys) exactly as it did; so is `recipe` left at
"official" (issue 15: each baseline's own optimizer, or "paper": the shared SGD of §5.4 for every method).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from base import training
from base.config import Section
from incremental.method_names import unknown

# keys that do not change what a finished task stores: a run may be resumed or extended with other values (the
# budget keys epochs/steps/min_steps/milestones all change what a task trains: none of them is neutral)
RESUME_NEUTRAL = ("methods", "num_tasks", "track", "num_workers", "eval_batch_size", "log_every")
# opt-in keys and their "off" value: left out of the resolved config when off (module docstring)
OPT_IN = {"steps": None, "min_steps": 0, "recipe": "official"}
PAPER_FRACTIONS = [0.5, 0.8]  # §5.4: lr /10 after 50 and 80 of 100 epochs


class IncrementalConfig(Section):
    methods: list[str] = Field(default_factory=lambda: ["nws", "finetune"])  # run in this order
    num_tasks: int | None = Field(None, ge=1)  # the first N tasks of tasks.json; None = all
    epochs: int | None = Field(100, ge=1)  # per task; null when the budget is `steps`
    steps: int | None = Field(None, ge=1)  # budget in optimizer steps per task; epochs = ceil(steps / steps per epoch)
    min_steps: int = Field(0, ge=0)  # a task whose budget is shorter trains more epochs; 0 = the budget as given
    batch_size: int = Field(32, ge=1)  # global: split over the processes of `accelerate launch`
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(1e-5, ge=0)
    # where lr is multiplied by gamma: epochs (integers), or fractions of the task's steps (numbers in (0, 1));
    # default [50, 80] with an `epochs` budget, [0.5, 0.8] with a `steps` budget
    milestones: list[int | float] = Field(default_factory=lambda: [50, 80])
    gamma: float = Field(0.1, gt=0)
    # each method's own optimizer recipe, or the paper's shared SGD for all (§5.4, App. 5; incremental.methods);
    # options.<method>.recipe overrides it for one method
    recipe: Literal["official", "paper"] = "official"
    beta: float = Field(0.5, ge=0)  # NWS: weight of the summed Eq. 2 similarity terms
    head: Literal["nws", "float"] = "nws"  # NWS: the head is an NWS layer over the head pool, or a float layer
    codec: Literal["smallest", "packed", "entropy", "delta", "near"] = "smallest"  # NWS: how task indices are stored
    precision: Literal["bf16", "fp32"] = "fp32"  # bf16 = accelerate's autocast (the search stays fp32)
    cpu: bool = False  # force the CPU even where a GPU is visible
    augment: bool = True  # the loader's training augmentation
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cut epochs short (a subset per epoch; smoke runs)
    max_consecutive_skips: int = Field(5, ge=1)  # non-finite losses in a row before the task stops
    log_every: int = Field(50, ge=1)  # optimizer steps between logged training losses
    track: bool = True  # MLflow child run per method
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-method options, by method name

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        """A method is a file of incremental/methods/: a misspelt one is refused when the config loads, not after
        the data and pretraining stages (issue 19)."""
        why = unknown(methods)
        if why:
            raise ValueError(why)
        return methods

    @field_validator("options")
    @classmethod
    def _options_of_known_methods(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Options under a misspelt method name would be ignored without a word: refused like the name itself."""
        why = unknown(list(options))
        if why:
            raise ValueError(why)
        return options

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods listed twice: {self.methods}")
        self._check_budget()
        fractions = [m for m in self.milestones if isinstance(m, float)]
        if fractions and len(fractions) != len(self.milestones):
            raise ValueError(f"milestones must be all epochs (integers) or all fractions, got {self.milestones}")
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if any(not 0 < m < 1 for m in fractions):
            raise ValueError(f"fractional milestones must lie in (0, 1) (epochs are integers), got {self.milestones}")
        if self.steps is not None and self.milestones and not fractions:
            raise ValueError(f"milestones {self.milestones} are epochs, but the budget is incremental.steps: give "
                             f"them as fractions of the steps (e.g. {PAPER_FRACTIONS})")
        return self

    def _check_budget(self) -> None:
        """One budget: `epochs` or `steps` (a config giving `steps` has its default epochs cleared, and its default
        milestones become the paper's fractions)."""
        given = self.model_fields_set
        if self.steps is not None:
            if "epochs" in given and self.epochs is not None:
                raise ValueError(f"give the budget as epochs or as steps, not both (epochs={self.epochs}, "
                                 f"steps={self.steps}; set the other to null)")
            self.epochs = None
            if "milestones" not in given:
                self.milestones = list(PAPER_FRACTIONS)
        elif self.epochs is None:
            raise ValueError("no budget: set incremental.epochs or incremental.steps")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        for key, off in OPT_IN.items():
            if key in data and data[key] == off:
                del data[key]
        return data

    def lr_factor(self, epoch: int) -> float:
        """gamma ** (number of epoch milestones reached): the MultiStepLR of the paper as a function of the epoch,
        for an `epochs` budget whose milestones are epochs. A task's actual schedule (fractions, `steps`,
        `min_steps`) is incremental.schedule's TaskSchedule (`ctx.schedule` of a method)."""
        if self.epochs is None or any(isinstance(m, float) for m in self.milestones):
            raise ValueError("lr_factor(epoch) needs epoch milestones and an epochs budget; use the task's "
                             "incremental.schedule.TaskSchedule.lr_factor(step)")
        return training.lr_factor(epoch, self.milestones, self.gamma)
