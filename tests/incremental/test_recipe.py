"""The recipe switch (issue 15): "official" trains each method with its own paper's optimizer, "paper" with the
shared SGD of seed 004_ §5.4 (App. 5 of 001_ keeps only method-specific hyperparameters such as KSM's mask lr);
`incremental.recipe` sets it for every method, `options.<name>.recipe` for one; the keys of an official recipe are
refused under "paper"; an untouched config hashes as before the switch existed."""

import pytest
import torch

from base.config import ConfigError, config_hash, resolved
from incremental.loop import run, run_hash
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import method_for

PAPER = {"lr": 0.02, "momentum": 0.8, "weight_decay": 3e-5, "nesterov": True}


def optimizer_of(m, t=0):
    model = m.setup_task(t)
    m.ctx.schedule = m.ctx.schedule_for(t)
    return m.make_optimizer(m.param_groups(model))


@pytest.mark.parametrize("name,official", [("supsup", torch.optim.Adam), ("dst", torch.optim.Adam),
                                           ("piggyback", torch.optim.Adam), ("ksm", torch.optim.Adam),
                                           ("finetune", torch.optim.SGD), ("packnet", torch.optim.SGD),
                                           ("sequential", torch.optim.SGD), ("nws", torch.optim.SGD),
                                           ("wsn", torch.optim.Adam)])
def test_the_switch_changes_the_optimizer(digits, pretrained, tmp_path, name, official):
    own = optimizer_of(method_for(name, digits, pretrained, tmp_path / "official", **PAPER))
    assert type(own) is official
    m = method_for(name, digits, pretrained, tmp_path / "paper", recipe="paper", **PAPER)
    shared = optimizer_of(m)
    assert type(shared) is torch.optim.SGD and m.optimizer is shared and m.recipe == "paper"
    for g in shared.param_groups:
        assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.8, 3e-5, True)
    lrs = [g["lr"] for g in shared.param_groups]
    if name in ("piggyback", "ksm"):  # App. 5: the mask lr is method-specific and stays; BN and head take the paper's
        assert lrs == [m.opts.lr_mask, 0.02, 0.02]
    else:
        assert set(lrs) == {0.02}
    # one method alone: options.<name>.recipe overrides incremental.recipe both ways
    alone = method_for(name, digits, pretrained, tmp_path / "alone", recipe="paper",
                       options={name: {"recipe": "official"}}, **PAPER)
    assert type(optimizer_of(alone)) is official and alone.recipe == "official"


def test_official_recipe_keys_are_refused_under_paper(digits, pretrained, tmp_path):
    with pytest.raises(ConfigError, match=r"incremental.options.supsup: lr, schedule belong to supsup's official "
                                          r"recipe, but incremental.recipe is 'paper'"):
        method_for("supsup", digits, pretrained, tmp_path / "a", recipe="paper",
                   options={"supsup": {"lr": 1e-3, "schedule": "loop"}})
    with pytest.raises(ConfigError, match=r"optimizer belong to dst's .* incremental.options.dst.recipe is 'paper'"):
        method_for("dst", digits, pretrained, tmp_path / "b", options={"dst": {"recipe": "paper", "optimizer": "sgd"}})
    with pytest.raises(ConfigError, match="incremental.options.ksm"):
        method_for("ksm", digits, pretrained, tmp_path / "c", options={"ksm": {"recipe": "adam"}})
    # the mask lr is not the official recipe's alone (App. 5 keeps it): allowed under "paper"
    method_for("ksm", digits, pretrained, tmp_path / "d", recipe="paper", options={"ksm": {"lr_mask": 1e-3}})


def test_supsup_under_the_paper_recipe_follows_the_loops_milestones(digits, pretrained, tmp_path):
    """The official SupSup anneals its lr with a cosine per epoch; under "paper" the loop's milestones alone scale
    the shared lr, so before_step leaves the lr the loop set."""
    m = method_for("supsup", digits, pretrained, tmp_path, recipe="paper", epochs=4)
    opt = optimizer_of(m)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"] = 0.01
    m._epoch = 2
    m.before_step(m.setup_task(0))
    assert [g["lr"] for g in opt.param_groups] == [0.01] * len(opt.param_groups)
    official = method_for("supsup", digits, pretrained, tmp_path / "o", epochs=4)
    opt = optimizer_of(official)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"] = 0.01
    official._epoch = 2
    official.before_step(None)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.005)] * len(opt.param_groups)  # cos(π/2)


def test_the_recipe_and_the_hashes(digits, pretrained, tmp_path):
    """Left at "official" the key is not in the resolved config (every stored run keeps its hash); "paper" changes
    the hash of the methods whose recipe it changes and keeps that of the methods whose official optimizer is the
    paper's SGD; metrics.json says which recipe trained."""
    base, paper = make_config(), make_config(recipe="paper")
    assert "recipe" not in resolved(base)["incremental"] and resolved(paper)["incremental"]["recipe"] == "paper"
    assert config_hash(base) == config_hash(make_config(recipe="official"))
    assert run_hash(base, "finetune") == run_hash(paper, "finetune")
    assert run_hash(base, "nws") == run_hash(paper, "nws")
    assert run_hash(base, "supsup") != run_hash(paper, "supsup")
    doc = run(make_config(num_tasks=1, epochs=1, recipe="paper", max_steps_per_epoch=3), digits, pretrained,
              tmp_path, methods=["dst"])["dst"]
    assert doc["recipe"] == "paper"
