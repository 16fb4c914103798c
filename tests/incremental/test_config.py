"""The incremental section: paper defaults, strict keys, per-method options validated by the method's schema, and
the task budget (issue 14): epochs or steps, an opt-in min_steps, milestones as epochs or fractions."""

import pytest

from base.config import ConfigError, config_hash, resolved, validate
from incremental.config import RESUME_NEUTRAL, IncrementalConfig
from incremental.loop import run_hash
from incremental.methods import available, get_method, make_method
from pipeline.config import experiment_schema
from tests.incremental.fixtures import make_config


def test_defaults_are_the_papers_common_hyperparameters():
    inc = IncrementalConfig()
    assert (inc.epochs, inc.batch_size, inc.lr, inc.momentum, inc.weight_decay) == (100, 32, 0.01, 0.9, 1e-5)
    assert (inc.milestones, inc.gamma, inc.beta, inc.codec, inc.head) == ([50, 80], 0.1, 0.5, "smallest", "nws")
    assert [inc.lr_factor(e) for e in (0, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="incremental.epoch'.*valid keys"):
        validate(experiment_schema(), {"incremental": {"epoch": 3}})


def test_decreasing_milestones_are_refused():
    with pytest.raises(ConfigError, match="milestones"):
        validate(experiment_schema(), {"incremental": {"milestones": [80, 50]}})


def test_methods_are_discovered_from_their_files():
    assert {"nws", "finetune"} <= set(available())
    assert get_method("nws").name == "nws"
    with pytest.raises(ConfigError, match="unknown method 'nope'.*finetune"):
        get_method("nope")


def test_method_options_are_validated_by_the_method(tmp_path):
    cfg = make_config(options={"finetune": {"nonsense": 1}})
    with pytest.raises(ConfigError, match="incremental.options.finetune.*nonsense"):
        make_method("finetune", cfg, tmp_path, tmp_path, tmp_path / "out", [])


def test_budget_keys_are_opt_in_so_stored_runs_keep_their_hash():
    """`steps` and `min_steps` left at their defaults are not in the resolved config: a config written before they
    existed hashes as it did (hashes computed with the incremental section of before issue 14)."""
    assert config_hash(resolved(IncrementalConfig())) == "1d9b0a3a694a5102"
    old = IncrementalConfig(epochs=2, milestones=[1], max_steps_per_epoch=3, lr=0.05)
    assert config_hash(resolved(old)) == "535d0751b0adf8d9"
    assert {"steps", "min_steps"}.isdisjoint(resolved(old))
    raised = IncrementalConfig(epochs=2, milestones=[1], max_steps_per_epoch=3, lr=0.05, min_steps=50)
    assert resolved(raised)["min_steps"] == 50 and validate(IncrementalConfig, resolved(raised)) == raised
    assert run_hash(make_config(min_steps=50), "finetune") != run_hash(make_config(), "finetune")
    assert not {"steps", "min_steps", "epochs", "milestones"} & set(RESUME_NEUTRAL)  # they change what is trained


def test_a_step_budget_replaces_the_epochs_and_takes_fractional_milestones():
    inc = validate(experiment_schema(), {"incremental": {"steps": 500}}).incremental
    assert (inc.epochs, inc.steps, inc.milestones) == (None, 500, [0.5, 0.8])  # the paper's shape, §5.4
    assert validate(IncrementalConfig, resolved(inc)) == inc  # the saved config loads back to the same budget
    fractions = validate(experiment_schema(), {"incremental": {"epochs": 6, "milestones": [0.5, 0.8]}}).incremental
    assert fractions.milestones == [0.5, 0.8] and isinstance(fractions.milestones[0], float)
    with pytest.raises(ValueError, match="epoch milestones"):
        fractions.lr_factor(3)  # the per-epoch factor cannot express a fraction: ctx.schedule can


@pytest.mark.parametrize("incremental,message", [
    ({"steps": 500, "epochs": 6}, "epochs or as steps, not both"),
    ({"steps": 500, "milestones": [50, 80]}, "are epochs, but the budget is incremental.steps"),
    ({"milestones": [1, 0.5]}, "all epochs .integers. or all fractions"),
    ({"milestones": [50.0]}, r"fractional milestones must lie in \(0, 1\)"),
    ({"epochs": None}, "no budget"),
    ({"min_steps": -1}, "incremental.min_steps: Input should be greater than or equal to 0"),
])
def test_a_bad_budget_is_refused_naming_it(incremental, message):
    with pytest.raises(ConfigError, match=message):
        validate(experiment_schema(), {"incremental": incremental})


def test_every_method_is_checked_before_the_first_trains(digits, pretrained, tmp_path):
    """A bad option of the last method used to stop the loop after the first method had trained every task."""
    from incremental.loop import run

    cfg = make_config(num_tasks=1, options={"finetune": {"nonsense": 1}})
    with pytest.raises(ConfigError, match="incremental.options.finetune.*nonsense"):
        run(cfg, digits, pretrained, tmp_path / "out", methods=["nws", "finetune"])
    with pytest.raises(ConfigError, match="methods: unknown method 'nope'"):
        run(make_config(num_tasks=1), digits, pretrained, tmp_path / "out", methods=["nws", "nope"])
    assert not (tmp_path / "out").exists()  # nws trained nothing


def test_model_input_size_is_opt_in_and_only_for_fully_connected_networks():
    """`model.input_size` (the first layer of fc1024/lenet300 depends on it) is left out of the resolved config when
    unset, so configs written before it existed keep their hash (computed with the model section of before it)."""
    from base.config import ModelConfig

    assert config_hash(resolved(ModelConfig())) == "22f1735dd4619e3b"
    assert config_hash(resolved(ModelConfig(arch="vgg16", width=0.5))) == "223ea49f086e7a77"
    fc = ModelConfig(arch="lenet300", input_size=32)
    assert resolved(fc)["input_size"] == 32 and validate(ModelConfig, resolved(fc)) == fc
    assert fc.build(3).features[0].in_features == 32 * 32
    with pytest.raises(ConfigError, match="model.input_size is for the fully connected networks"):
        ModelConfig(input_size=32).build(3)
