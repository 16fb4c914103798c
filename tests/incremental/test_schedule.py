"""Task schedules in optimizer steps (issue 14, incremental.schedule): epochs derived from a step budget and the
task's size, a floor of min_steps for small tasks, milestones that keep their place in a changed schedule, explicit
epoch configs resolving exactly as before, and a tiny digits task lifted from chance by the floor."""

from pathlib import Path

import numpy as np
import pytest

from base.config import load_config
from data_prep.prepare import prepare
from data_prep.sources.common import SubsetLoader
from data_prep.sources.digits import open_digits
from data_prep.types import Source, Split
from incremental.config import IncrementalConfig
from incremental.loop import run, task_list
from incremental.methods import make_method
from incremental.methods.finetune import Finetune
from incremental.schedule import resolve, steps_per_epoch
from loaders import make_loader
from pipeline.config import experiment_schema
from tests import margin
from tests.incremental.fixtures import make_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def old_schedule(inc, steps_in_epoch: int) -> list[float]:
    """The lr factor of every step as the task loop before issue 14 applied it: set per epoch from the epoch
    milestones, inc.epochs epochs of steps_in_epoch steps."""
    return [inc.gamma ** sum(epoch >= m for m in inc.milestones)
            for epoch in range(inc.epochs) for _ in range(steps_in_epoch)]


def test_a_step_budget_derives_the_epochs_from_the_task_size():
    inc = IncrementalConfig(steps=100, batch_size=32)  # milestones default to the paper's [0.5, 0.8] of the steps
    s = resolve(inc, 2, 288)
    assert (s.steps_per_epoch, s.epochs, s.steps, s.milestones, s.budget) == (9, 12, 108, (54, 86), "steps")
    big = resolve(inc, 0, 12_000)  # 375 steps an epoch: one whole epoch
    assert (big.epochs, big.steps, big.milestones) == (1, 375, (188, 300))
    assert s.describe() == "288 images, 9 steps/epoch, 12 epochs = 108 steps, lr x0.1 at steps 54, 86"


def test_a_tiny_task_is_raised_to_the_minimum_steps():
    inc = IncrementalConfig(epochs=6, milestones=[4], min_steps=50, batch_size=32)
    tiny, normal = resolve(inc, 0, 40), resolve(inc, 1, 288)
    assert (tiny.steps_per_epoch, tiny.epochs, tiny.steps, tiny.budget) == (1, 50, 50, "min_steps")
    assert tiny.milestones == (33,)  # epoch 4 of 6 keeps its place: 2/3 of the raised schedule
    assert (normal.epochs, normal.steps, normal.milestones, normal.budget) == (6, 54, (36,), "epochs")
    assert tiny.describe().startswith("40 images, 1 steps/epoch, 50 epochs = 50 steps (raised to")
    # a task smaller than one batch trains on its partial batch, one step an epoch
    assert resolve(inc, 0, 20).steps_per_epoch == 1 and resolve(inc, 0, 20).steps == 50
    # a step budget is raised too; the floor counts whole epochs, max_steps_per_epoch still cuts them short
    assert resolve(IncrementalConfig(steps=10, min_steps=50), 0, 40).epochs == 50
    smoke = resolve(IncrementalConfig(epochs=1, milestones=[], min_steps=50, max_steps_per_epoch=3), 0, 288)
    assert (smoke.epochs, smoke.steps_per_epoch, smoke.steps) == (6, 3, 18)


def test_fractional_milestones_keep_the_papers_shape_whatever_the_length():
    inc = IncrementalConfig(epochs=100, milestones=[0.5, 0.8], min_steps=1000)
    for samples, steps in ((40, 1000), (2_500, 7_800), (12_000, 37_500)):
        s = resolve(inc, 0, samples)
        assert s.steps == steps and s.milestones == (steps // 2, steps * 4 // 5)
        assert [s.lr_factor(k) for k in (0, steps // 2 - 1, steps // 2, steps * 4 // 5, steps - 1)] == \
            pytest.approx([1, 1, 0.1, 0.01, 0.01])
        assert s.reach() == pytest.approx(sum(s.lr_factor(k) for k in range(s.steps)))
    # on the paper's 100 epochs the fractions are the paper's epoch milestones, step for step
    paper = resolve(IncrementalConfig(), 0, 2_500)
    assert resolve(inc, 0, 2_500).milestones == paper.milestones == (50 * 78, 80 * 78)


@pytest.mark.parametrize("source", ["default", "fixture", "demo.yaml", "fmnist.yaml", "split_cifar100_resnet18.yaml",
                                    "cub2sketches_resnet18.yaml"])
@pytest.mark.parametrize("samples", [1, 20, 40, 288, 2_500])
def test_an_explicit_epoch_config_resolves_exactly_as_before(source, samples):
    if source == "default":
        inc = IncrementalConfig()
    elif source == "fixture":
        inc = make_config(max_steps_per_epoch=3).incremental
    else:  # a shipped config with its floor turned off: the schedule it had before the floor existed
        inc = load_config(experiment_schema(), CONFIGS / source, ["incremental.min_steps=0"]).incremental
    per_epoch = max(1, samples // inc.batch_size)  # the loop before issue 14: len(loader), at most the cap
    per_epoch = min(per_epoch, inc.max_steps_per_epoch or per_epoch)
    s = resolve(inc, 0, samples)
    assert (s.epochs, s.steps_per_epoch, s.budget) == (inc.epochs, per_epoch, "epochs")
    assert [s.lr_factor(k) for k in range(s.steps)] == old_schedule(inc, per_epoch)


def test_the_demos_own_tasks_keep_their_schedule_under_its_floor():
    inc = load_config(experiment_schema(), CONFIGS / "demo.yaml").incremental
    s = resolve(inc, 0, 288)
    assert (s.epochs, s.steps, s.milestones, s.budget) == (6, 54, (36,), "epochs")
    assert [s.lr_factor(k) for k in range(s.steps)] == old_schedule(inc, 9)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [7, 32, 100, 1000])
def test_steps_per_epoch_is_the_training_loaders_length(digits, world, batch):
    unit = digits / "task00"
    n = make_loader(unit, "train", "memory", batch_size=1).total
    for rank in range(world):
        loader = make_loader(unit, "train", "memory", batch_size=max(1, batch // world), train=True, rank=rank,
                             world_size=world, drop_last=True)
        if len(loader) == 0:
            loader.drop_last = False  # incremental.train: a split smaller than a batch keeps its partial batch
        assert steps_per_epoch(n, batch, world) == len(loader)


def small_source(per_class: int) -> Source:
    """Digits with only `per_class` training images per class (the test split whole): tasks of 2 * per_class."""
    src = open_digits()
    train = src.splits["train"]
    idx = np.sort(np.concatenate([np.flatnonzero(train.labels == c)[:per_class] for c in range(10)]))
    splits = {**src.splits, "train": Split(labels=train.labels[idx], load=SubsetLoader(train.load, idx))}
    return Source(name="digits", classes=src.classes, splits=splits)


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_digits")
    prepare("digits", None, out, ("wds",), "blocks", {"classes_per_task": 2}, progress=False,
            source=small_source(20), pretrain_set=False)
    return out


def test_min_steps_lift_tiny_tasks_from_chance(tiny_digits, pretrained, tmp_path, monkeypatch, capsys):
    """5 tasks of 40 training images (1 step an epoch at batch 32): the old budget of 2 epochs is 2 steps and leaves
    Finetune at chance; min_steps=50 gives every task 50 epochs and lifts it far above. Chance is 0.5 (2 classes);
    over seeds 0-5 the old budget gave 0.48-0.55, the floor 0.92-0.96."""
    seen = []
    setup = Finetune.setup_task
    monkeypatch.setattr(Finetune, "setup_task", lambda self, t: (seen.append(self.ctx.schedule), setup(self, t))[1])
    old = run(make_config(epochs=2, milestones=[1]), tiny_digits, pretrained, tmp_path / "old", ["finetune"],
              runs_dir=tmp_path)["finetune"]
    new = run(make_config(epochs=2, milestones=[1], min_steps=50), tiny_digits, pretrained, tmp_path / "new",
              ["finetune"], runs_dir=tmp_path)["finetune"]
    assert [(s["epochs"], s["steps"], s["milestones"]) for s in old["schedule_per_task"]] == [(2, 2, [1])] * 5
    assert [(s["epochs"], s["steps"], s["milestones"]) for s in new["schedule_per_task"]] == [(50, 50, [25])] * 5
    # ctx.schedule as each task's set-up saw it (FWT sets up tasks 1.. once more before training: same schedule)
    assert [s.as_dict() for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == \
        old["schedule_per_task"] + new["schedule_per_task"]
    assert "40 images, 1 steps/epoch, 50 epochs = 50 steps (raised to incremental.min_steps), lr x0.1 at step 25" \
        in capsys.readouterr().out
    margin.below("tiny tasks, old 2-epoch budget: avg acc", old["final_avg_acc"], 0.7)
    margin.above("tiny tasks, min_steps 50: avg acc", new["final_avg_acc"], 0.8)


def test_context_gives_any_tasks_schedule(digits, tmp_path):
    cfg = make_config(epochs=None, steps=30, milestones=[0.5])
    m = make_method("finetune", cfg, digits, tmp_path, tmp_path / "finetune", task_list(digits, 2))
    s = m.ctx.schedule_for(1)
    assert s == resolve(cfg.incremental, 1, s.train_samples) and s.steps >= 30 and m.ctx.schedule is None
