"""The post-pretraining health check (pretrain/health.py) on real digits runs: pools that collapse stop `nws pretrain`
and the pipeline naming the layers, `--allow-degenerate` keeps them without training again, and the shipped defaults
(pools at the kernels' scale, restarts on the run's period, recalibrated BatchNorm) pass the same short run. Each of
the two runs trains the demo's network at width 0.125 for one epoch of digits (22 steps)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from nws.io import read_json
from pretrain.config import HealthConfig
from pretrain.health import EXIT_CODE, chance_p_value, check
from tests import margin
from tests.conftest import SEED, THREADS
from tests.pretrain.conftest import DEMO, ROOT, cli_env, run_pretrain

# the demo's network at width 0.125 (layer1: 64 kernels, so a 64-kernel pool can be fully used) on one full epoch of
# 22 steps: short, but a judged run (not a smoke run)
SHORT = ["model.width=0.125", "data.image_size=32", "pretrain.batch_size=64", "pretrain.epochs=1",
         "pretrain.kind=nws", "pretrain.eval_batch_size=512", "pretrain.checkpoint_every=0", "pretrain.log_every=5",
         f"pretrain.threads={THREADS}", f"seeds=[{SEED}]"]
# the paper's N(0, 1) pools and no restart within the run: the collapse of issue 14
COLLAPSE = ["pretrain.pool_init=normal", "pretrain.distill.restart_every=1000"]
THREE_BY_THREE = [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]


def _run(tmp, digits, out, *overrides, **kw) -> subprocess.CompletedProcess:
    return run_pretrain(tmp, digits, out, *SHORT, *overrides, tiny=False, **kw)


def _pipeline(tmp, config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "run", "-c", str(config), "--runs-dir", str(tmp / "runs"),
                           *args, *SHORT, *COLLAPSE], cwd=ROOT, env=cli_env(tmp), capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """`nws pipeline run` of the demo's data and pretrain stages (no methods: like imagenet_pools_resnet18) with
    the collapse settings; returns (tmp, its process, the pretrain folder)."""
    tmp = tmp_path_factory.mktemp("collapsed")
    config = yaml.safe_load(DEMO.read_text())
    config["incremental"]["methods"] = []
    (tmp / "collapse.yaml").write_text(yaml.safe_dump(config))
    return tmp, _pipeline(tmp, tmp / "collapse.yaml"), tmp / "runs" / "demo" / f"seed{SEED}" / "pretrain"


def test_collapsed_pools_stop_the_pipeline_naming_the_layers(collapsed):
    """The pretrain stage exits with code 5 and the pipeline stops there (exit 1) with the stage's error: every
    collapsed 3x3 layer with its pool kernels in use, and what to change. pretrain.json holds the verdict; neither
    `complete` nor the pipeline's stage record lets a later stage start from these pools."""
    tmp, proc, out = collapsed
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    err = proc.stderr
    assert "exited with code 5 (degenerate pretraining outputs; pass --allow-degenerate" in err
    assert "degenerate pretraining outputs (pretrain.json written" in err and "pretrain.pool_init=kmeans" in err
    assert not (out / "complete").exists() and not (out / "stage.json").exists()
    assert not (out.parent / "incremental").exists()
    health = read_json(out / "pretrain.json")["nws"]["health"]
    assert health["degenerate"] and not health["smoke_run"]
    for name in THREE_BY_THREE:  # every 3x3 layer computes with one or two pool kernels
        assert name in health["degenerate_layers"], name
        assert health["layers"][name]["used"] <= 2, (name, health["layers"][name])
        assert f"nws {name}: {health['layers'][name]['used']} of 64 pool kernels used" in err


def test_allow_degenerate_keeps_the_outputs_without_training_again(collapsed):
    """`nws pretrain` on the stopped folder stops again (code 5) without training; with --allow-degenerate it marks
    the outputs complete, still without training; the config key does the same; and `nws pipeline run
    --allow-degenerate` goes on from them."""
    tmp, _, out = collapsed
    data, config = out.parents[1] / "data", out.parent / "config.yaml"
    before = (out / "pools.safetensors").stat().st_mtime_ns
    proc = run_pretrain(tmp, data, out, config=config, tiny=False)
    assert proc.returncode == EXIT_CODE and "layer1.0.conv1" in proc.stderr, proc.stderr[-3000:]
    proc = run_pretrain(tmp, data, out, "--allow-degenerate", config=config, tiny=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "degenerate outputs kept (allowed)" in proc.stderr and "layer1.0.conv1" in proc.stderr
    assert (out / "pools.safetensors").stat().st_mtime_ns == before  # not trained again
    summary = read_json(out / "pretrain.json")
    assert (out / "complete").is_file() and summary["allowed_degenerate"] and not summary["healthy"]
    proc = run_pretrain(tmp, data, out, "pretrain.allow_degenerate=true", config=config, tiny=False)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr[-3000:]
    proc = _pipeline(tmp, tmp / "collapse.yaml", "--allow-degenerate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "stage.json").is_file() and (out / "pools.safetensors").stat().st_mtime_ns == before


def test_shipped_defaults_do_not_collapse_on_the_same_run(digits, tmp_path):
    """The same 22 steps with the defaults (k-means pools, restarts every 2 steps, recalibrated BatchNorm) pass the
    check. Measured over seeds 0-2: the lowest 3x3 KUR 0.91-1.0 (collapsed: 0.02-0.03), test accuracy 0.33-0.44 on
    360 images (chance 0.10; binomial p <= 7e-33)."""
    proc = _run(tmp_path, digits, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    s = read_json(tmp_path / "out" / "pretrain.json")["nws"]
    assert s["health"]["degenerate"] is False and (tmp_path / "out" / "complete").is_file()
    assert s["restart_every"] == 2 and s["recalibrated_batches"] == 22
    margin.above("lowest 3x3 pool utilisation", min(s["layers"][n]["utilisation"] for n in THREE_BY_THREE), 0.5)
    margin.below("binomial p of the test accuracy against chance", s["health"]["p_value"], 1e-6)


def _summary(accuracy=0.9, n=360, classes=10, steps=11, images=1408, epoch_images=1408, layers=None):
    return {"test_accuracy": accuracy, "eval_images": n, "num_classes": classes, "steps": steps, "images": images,
            "epoch_images": epoch_images, "layers": layers or {}}


def _layer(used, kernels=576, pool=64):
    return {"utilisation": used / pool, "used": used, "kernels": kernels, "pool_size": pool,
            "relative_quantisation_error": 0.5}


def test_check_judges_kur_against_what_the_layer_can_use_and_accuracy_against_chance():
    cfg = HealthConfig()
    h = check(_summary(layers={"a": _layer(2), "stem": _layer(6, kernels=24), "b": _layer(64)}), cfg)
    assert h["degenerate_layers"] == ["a"]  # 6 of 64 is a quarter of the 24 kernels the stem can use
    assert h["layers"]["stem"]["kur_relative"] == pytest.approx(0.25)
    assert not h["at_chance"] and h["degenerate"]
    # 10.2% of 460 on 10 classes (the run) is chance; 52 of 360 (14.4%) is not, 50 of 360 still is
    assert check(_summary(accuracy=47 / 460, n=460), cfg)["at_chance"]
    assert not check(_summary(accuracy=52 / 360), cfg)["at_chance"]
    assert check(_summary(accuracy=50 / 360), cfg)["at_chance"]
    assert chance_p_value(47, 460, 10) > 0.4 and chance_p_value(52, 360, 10) < 0.01 < chance_p_value(50, 360, 10)
    # less than an epoch, or fewer than health.min_steps steps: a smoke run, warned about but never stopped
    assert check(_summary(accuracy=0.1, images=256), cfg)["smoke_run"]
    assert check(_summary(accuracy=0.1, steps=9, images=2000), cfg)["smoke_run"]
    assert not check(_summary(accuracy=0.1), cfg)["smoke_run"]

