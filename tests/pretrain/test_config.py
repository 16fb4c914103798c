"""The `pretrain` section, the batch plan and the schedule (no engine needed)."""

import pytest

from base.config import ConfigError, load_config, validate
from pipeline.config import experiment_schema
from pretrain.config import PretrainConfig
from pretrain.engine import batch_plan, ds_config, lr_at
from tests.pretrain.conftest import DEMO, ROOT


def test_defaults_are_the_official_pool_pretraining_settings():
    p = PretrainConfig()
    assert (p.lr, p.momentum, p.nesterov, p.weight_decay, p.batch_size, p.epochs) == (0.01, 0.9, True, 4e-5, 2048, 160)
    assert (p.milestones, p.gamma, p.beta, p.precision, p.zero_stage) == ([100], 0.1, 0.5, "bf16", 1)
    assert (p.distill.decay, p.distill.eps) == (0.99, 1e-5)


def test_imagenet_config_is_the_paper_setting():
    cfg = load_config(experiment_schema(), ROOT / "configs" / "imagenet_pools_resnet18.yaml")
    assert (cfg.model.arch, cfg.model.stem, cfg.model.width, cfg.model.pool_size) == ("resnet18", "nws", 1.0, 512)
    p = cfg.pretrain
    assert (p.epochs, p.batch_size, p.lr, p.weight_decay, p.milestones, p.beta) == (160, 2048, 0.01, 4e-5, [100], 0.5)
    assert (p.precision, p.zero_stage, p.nesterov, p.momentum) == ("bf16", 1, True, 0.9)


def test_shipped_configs_validate():
    for name in ("demo", "fmnist"):
        cfg = load_config(experiment_schema(), ROOT / "configs" / f"{name}.yaml")
        assert cfg.pretrain.kind == "both"


def test_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain.lr_rate'.*valid keys here: .*\blr\b"):
        load_config(experiment_schema(), DEMO, ["pretrain.lr_rate=0.1"])


def test_warm_start_needs_a_data_driven_pool_init():
    with pytest.raises(ConfigError, match="warm_start"):
        validate(PretrainConfig, {"warm_start": "plain_backbone.safetensors", "pool_init": "normal"})
    assert validate(PretrainConfig, {"warm_start": "x.safetensors", "pool_init": "kmeans"}).pool_init == "kmeans"


def test_global_batch_is_fixed_across_world_sizes():
    p = PretrainConfig(batch_size=64)
    assert [(b.micro_batch, b.accumulation) for b in (batch_plan(p, 1), batch_plan(p, 2), batch_plan(p, 8))] == \
        [(64, 1), (32, 1), (8, 1)]
    p = PretrainConfig(batch_size=64, micro_batch=16)
    plans = [batch_plan(p, w) for w in (1, 2, 4)]
    assert [(b.micro_batch * b.accumulation * b.world_size) for b in plans] == [64, 64, 64]
    assert [b.accumulation for b in plans] == [4, 2, 1]
    cfg = ds_config(p, plans[1])
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == \
        (64, 16, 2)
    with pytest.raises(ValueError, match="micro_batch"):
        batch_plan(PretrainConfig(batch_size=64, micro_batch=24), 2)


def test_ds_config_precision_and_zero():
    p = PretrainConfig(zero_stage=2, grad_clip=1.5)
    cfg = ds_config(p, batch_plan(p, 1))
    assert cfg["zero_optimization"] == {"stage": 2} and cfg["zero_allow_untested_optimizer"]
    assert cfg["gradient_clipping"] == 1.5
    assert cfg["torch_autocast"]["enabled"] and cfg["torch_autocast"]["dtype"] == "bfloat16"
    assert "bf16" not in cfg and "fp16" not in cfg  # autocast keeps fp32 params and buffers: BatchNorm works
    assert "torch_autocast" not in ds_config(PretrainConfig(precision="fp32"), batch_plan(p, 1))


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    """`auto` (demo.yaml, fmnist.yaml) autocasts to bf16 only on hardware that computes it; elsewhere fp32, since
    emulated bf16 was 17x slower per step on this kind of CPU. An explicit setting is kept as given."""
    from pretrain import engine

    p = PretrainConfig(precision="auto")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(engine, "native_bf16", lambda native=native: native)
        assert engine.precision_of(p) == want
        assert ("torch_autocast" in ds_config(p, batch_plan(p, 1))) == (want == "bf16")
        assert engine.precision_of(PretrainConfig(precision="bf16")) == "bf16"
        assert engine.precision_of(PretrainConfig(precision="fp32")) == "fp32"


def test_multistep_schedule_per_epoch():
    p = PretrainConfig()
    assert [lr_at(p, e) for e in (0, 99, 100, 159)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    p = PretrainConfig(lr=0.1, milestones=[2, 4])
    assert [lr_at(p, e) for e in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_milestones_may_be_fractions_of_the_run():
    """0.75 of 12 epochs is epoch 9 (the demo's milestone), and follows `pretrain.epochs` when it is overridden."""
    p = PretrainConfig(epochs=12, milestones=[0.5, 0.75])
    assert p.milestone_epochs() == [6, 9]
    assert [lr_at(p, e) for e in (5, 6, 8, 9)] == pytest.approx([0.01, 0.001, 0.001, 0.0001])
    assert PretrainConfig(epochs=40, milestones=[0.75]).milestone_epochs() == [30]
    assert PretrainConfig(milestones=[100]).milestones == [100]  # integers stay epochs (and ints in the config)
    for bad in ([1.5], [0.8, 0.5], [0]):
        with pytest.raises(ValueError, match="milestone"):
            PretrainConfig(epochs=10, milestones=bad)


def test_defaults_guard_against_the_short_run_collapse():
    """Pools at the kernels' scale, restarts on the run's period and a usage threshold a short run can reach, and
    the shipped demo and fmnist configs use them; the paper's ImageNet config keeps its N(0, 1) pools."""
    p = PretrainConfig()
    assert (p.pool_init, p.distill.restart_every, p.distill.dead_usage) == ("kmeans", None, 1.0)
    assert (p.allow_degenerate, p.health.min_kur, p.health.alpha) == (False, 0.1, 0.01)
    for name in ("demo", "fmnist"):
        cfg = load_config(experiment_schema(), ROOT / "configs" / f"{name}.yaml").pretrain
        assert (cfg.pool_init, cfg.distill.restart_every, cfg.recalibrate_bn > 0) == ("kmeans", None, True), name
    assert load_config(experiment_schema(), ROOT / "configs" / "imagenet_pools_resnet18.yaml").pretrain.pool_init \
        == "normal"
