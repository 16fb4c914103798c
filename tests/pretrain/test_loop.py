"""The training loop in this process (a 1-rank gloo group, DeepSpeed ZeRO-1, bf16 autocast): the beta term really
reaches the temporary kernels, a non-finite step leaves no trace, warm-started pools come from the given network."""

import pytest
import torch

import nws
from base.tracking import NullRun
from base.training import NonFiniteLoss
from nws.search import nearest
from pretrain.loop import Trainer, build_model
from tests import margin
from tests.pretrain.conftest import experiment, make_job

ATOL = 3e-7  # a few fp32 ulps of temporary kernels below 1 in magnitude


def _one_step(digits, tmp_path, *overrides):
    cfg = experiment("pretrain.max_steps_per_epoch=1", *overrides)
    job = make_job(cfg, digits, tmp_path)
    trainer = Trainer("nws", job, NullRun())
    trainer.fit()
    return job, trainer


def test_beta_term_reaches_the_temporary_kernels(one_rank, digits, tmp_path):
    """The official pool pretraining lost the Eq. 2 term (notes §1.3). Here one step with beta and one without,
    from the same network and batch, differ in every layer's temporary kernels by exactly the beta term's
    gradient step: -lr (1 + momentum) beta 2 (W - K) / N (Nesterov's first step), K the searched kernels."""
    beta, lr, momentum = 5.0, 0.05, 0.9  # a large beta lifts the deepest layers' term well above fp32 rounding
    job, with_beta = _one_step(digits, tmp_path / "a", f"pretrain.beta={beta}")
    _, without = _one_step(digits, tmp_path / "b", "pretrain.beta=0")
    start = dict(nws.nws_layers(build_model("nws", job)))
    a, b = dict(nws.nws_layers(with_beta.model)), dict(nws.nws_layers(without.model))
    for name, layer in start.items():
        w0 = layer.flat_weight().detach()
        k0 = layer.pool[nearest(w0, layer.pool)]
        expected = -lr * (1 + momentum) * beta * 2 * (w0 - k0) / w0.numel()
        got = (a[name].flat_weight() - b[name].flat_weight()).detach()
        assert expected.abs().max() > 10 * ATOL, name  # the term is far above fp32 rounding of W (|W| < 1)
        torch.testing.assert_close(got, expected, rtol=0.01, atol=ATOL, msg=name)


def test_a_skipped_step_leaves_no_trace(one_rank, digits, tmp_path):
    """The only step of the run is made non-finite in one layer's Eq. 2 term: weights, pools and BatchNorm
    statistics stay exactly as built, and the skip is counted."""
    job, trainer = _one_step(digits, tmp_path, "pretrain.debug.nonfinite_steps=[0]",
                             "pretrain.debug.nonfinite_term=layer2.0.conv1")
    assert (trainer.state.step, trainer.state.skipped, trainer.state.micro) == (0, 1, 1)
    fresh = build_model("nws", job).state_dict()
    for key, value in trainer.model.state_dict().items():
        if not key.endswith("indices"):
            assert torch.equal(value, fresh[key]), key
    assert sum(trainer.distiller.restarts.values()) == 0


def test_skips_are_logged_and_k_in_a_row_stop_the_run(one_rank, digits, tmp_path, capsys):
    """The skip line names the bad term; the K-th skip in a row stops the run naming it (base.training's guard
    counts, pretrain.loop words it)."""
    _one_step(digits, tmp_path / "a", "pretrain.debug.nonfinite_steps=[0]", "pretrain.debug.nonfinite_term=ce")
    assert "[pretrain nws] non-finite loss at step 0: ce (step skipped)" in capsys.readouterr().out
    with pytest.raises(NonFiniteLoss, match=r"^1 consecutive non-finite steps, the last at step 0: non-finite "
                                            r"term\(s\) layer2\.0\.conv1; stopping \(the last checkpoint is intact"):
        _one_step(digits, tmp_path / "b", "pretrain.debug.nonfinite_steps=[0]",
                  "pretrain.debug.nonfinite_term=layer2.0.conv1", "pretrain.max_consecutive_skips=1")


def test_a_finite_step_changes_weights_pools_and_statistics(one_rank, digits, tmp_path):
    """The counterpart of the test above, so that it cannot pass by a loop that never steps."""
    job, trainer = _one_step(digits, tmp_path)
    fresh = build_model("nws", job).state_dict()
    now = trainer.model.state_dict()
    assert trainer.state.step == 1 and trainer.state.skipped == 0
    for key in ("layer1.0.conv1.weight", "layer1.0.conv1.pool", "layer1.0.bn1.running_mean"):
        assert not torch.equal(now[key], fresh[key]), key


def test_unknown_injection_term_is_named(one_rank, digits, tmp_path):
    with pytest.raises(ValueError, match="nonfinite_term='layer9'.*layer1.0.conv1"):
        _one_step(digits, tmp_path, "pretrain.debug.nonfinite_steps=[0]", "pretrain.debug.nonfinite_term=layer9")


def test_warm_start_pools_come_from_the_given_network(digits, tmp_path):
    """pool_init kmeans over a plain backbone: temporary kernels are that network's, and its kernels are quantised
    far better than by random pools."""
    from nws.io import save_tensors

    base = make_job(experiment(), digits, tmp_path)
    plain = build_model("plain", base)
    torch.nn.init.normal_(plain.layer1[0].conv1.weight, std=0.05)
    save_tensors(tmp_path / "plain.safetensors", plain.state_dict())
    warm = build_model("nws", make_job(experiment("pretrain.pool_init=kmeans",
                                                  f"pretrain.warm_start={tmp_path / 'plain.safetensors'}"),
                                       digits, tmp_path))
    cold = build_model("nws", make_job(experiment("pretrain.pool_init=normal"), digits, tmp_path))  # random pools
    layer, ref = warm.layer1[0].conv1, plain.layer1[0].conv1
    assert torch.equal(layer.weight, ref.weight)
    err = lambda m: nws.pools.quantisation_error(ref.weight.reshape(-1, 9), m.layer1[0].conv1.pool)  # noqa: E731
    margin.below("warm / cold quantisation error", err(warm) / err(cold), 0.5)


def test_restarts_follow_the_run_unless_set(one_rank, digits, tmp_path):
    """restart_every unset: nws.distill.restart_period of the run's optimizer steps (3 epochs of 11 steps -> 3); an
    explicit value wins."""
    job = make_job(experiment("pretrain.batch_size=128", "pretrain.epochs=3", "pretrain.max_steps_per_epoch=null"),
                   digits, tmp_path)
    trainer = Trainer("nws", job, NullRun())
    assert (trainer.total_steps, trainer.restart_every, trainer.distiller.restart_every) == (33, 3, 3)
    job = make_job(experiment("pretrain.distill.restart_every=7"), digits, tmp_path / "b")
    assert Trainer("nws", job, NullRun()).distiller.restart_every == 7


def test_recalibrated_statistics_are_those_of_the_stored_network(one_rank, digits, tmp_path):
    """After a short run the BatchNorm statistics are re-estimated on the frozen searched kernels: the stem's
    BatchNorm then holds exactly the mean and (unbiased) variance of the stored network's stem output over the
    recalibration batches — the network that pretrain/outputs.py writes and the later stages rebuild."""
    _, trainer = _one_step(digits, tmp_path, "pretrain.recalibrate_bn=2", "pretrain.augment=false")
    assert trainer.recalibrate() == 1  # the run's epoch is cut to one micro-batch, and so is the recalibration
    stored = nws.materialize(trainer.model)
    trainer.loader.set_epoch(trainer.p.epochs)
    x, _ = next(iter(trainer.loader))
    with torch.no_grad():
        h = stored.conv1(x)
    bn = trainer.model.bn1
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert all(layer.mode == "frozen" for _, layer in nws.nws_layers(trainer.model))
