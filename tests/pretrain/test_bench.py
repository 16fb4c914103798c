"""bench/pretrain.py without training: its command line, the overrides each mode hands the stage (validated by the
stage's own config schema), the reading of a full-width table and its own section of BENCHMARKS.md."""

from __future__ import annotations

import pytest

from bench import pretrain as bench

DEMO_OVERRIDES = ["pretrain.kind=both", "pretrain.epochs=2", "pretrain.checkpoint_every=0", "pretrain.log_every=1000",
                  "pretrain.threads=1"]


def config(overrides: list[str]):
    from base.config import load_config
    from pipeline.config import experiment_schema

    return load_config(experiment_schema(), bench.DEMO, overrides)


def test_demo_overrides_are_unchanged():
    assert bench.overrides(1) == DEMO_OVERRIDES
    assert bench.overrides(2, epochs=3, quick=True) == [
        "pretrain.kind=both", "pretrain.epochs=3", "pretrain.checkpoint_every=0", "pretrain.log_every=1000",
        "pretrain.threads=2", "model.width=0.125", "model.pool_size=16", "pretrain.batch_size=32"]


def test_full_width_command_line_builds_the_paper_network_bounded_by_steps():
    args = bench.parse_args(["--full-width", "--repeats", "1"])
    assert args.full_width and not args.quick and args.steps == bench.FULL_STEPS and args.repeats == 1
    assert bench.parse_args(["--full-width", "--steps", "7"]).steps == 7
    got = bench.overrides(1, quick=args.quick, full_width=True, steps=7)
    assert "model.width=1.0" in got and "model.pool_size=512" in got and "pretrain.max_steps_per_epoch=7" in got
    cfg = config(got)  # every key exists and validates
    assert (cfg.model.width, cfg.model.pool_size) == (1.0, 512)
    assert (cfg.pretrain.epochs, cfg.pretrain.max_steps_per_epoch) == (1, 7)
    assert cfg.pretrain.kind == "both" and cfg.pretrain.allow_degenerate and cfg.pretrain.threads == 1
    assert cfg.pretrain.batch_size == 64  # the same global batch in both rows: 1 × 64 and 2 × 32
    assert [label for label, _, _ in bench.FULL_RUNS] == ["1 rank × 1 thread", "2 ranks × 1 thread"]
    assert all(threads == 1 for _, _, threads in bench.FULL_RUNS)


def test_full_width_pools_fit_the_network():
    """512-kernel pools: every 3×3 layer of the width-1.0 ResNet-18 holds more kernels than that (4,096 at least);
    the 7×7 stem's 192 can use at most 192 of them, which the health check judges against (reachable share)."""
    from torch import nn

    from pretrain.health import layer_health

    net = config(bench.overrides(1, full_width=True)).model.build(10)
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    kernels = {name: m.out_channels * m.in_channels // m.groups for name, m in convs.items()}
    assert min(n for name, n in kernels.items() if convs[name].kernel_size == (3, 3)) == 64 * 64
    stem = [n for name, n in kernels.items() if convs[name].kernel_size == (7, 7)]
    assert stem == [192]
    full_use = {"kernels": 192, "pool_size": 512, "utilisation": 192 / 512, "used": 192,
                "relative_quantisation_error": 0.0}
    assert not layer_health(full_use, min_kur=0.5)["degenerate"]


@pytest.mark.parametrize("argv", [["--quick", "--full-width"], ["--full-width", "--epochs", "2"], ["--steps", "5"],
                                  ["--full-width", "--steps", "0"]])
def test_command_line_refuses_mixed_bounds(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_quick_and_full_width_are_not_one_network():
    with pytest.raises(ValueError, match="choose one"):
        bench.overrides(1, quick=True, full_width=True)


def test_full_width_reading_in_numbers():
    # 1 rank: NWS 0.8 s and plain 0.4 s a step of 64 images; 2 ranks: plain 0.25 s, NWS 0.8 s
    results = {"1 rank × 1 thread": {"nws": [80.0, 70.0, 90.0], "plain": [160.0]},
               "2 ranks × 1 thread": {"nws": [80.0], "plain": [256.0]}}
    assert bench.speedups(results) == pytest.approx({"nws": 1.0, "plain": 1.6})
    text = bench.full_width_reading(results)
    assert "NWS 1.00× (under the aim; as if 100% of a 1-rank step did not split)" in text
    assert "the plain network 1.60× (reaches the aim; as if 25% of a 1-rank step did not split)" in text
    # NWS adds 0.4 s (50%) that every rank does in full: at most 0.8 / (0.2 + 0.4) = 1.33×; predicted 0.25 + 0.4
    assert "NWS adds 0.40 s" in text and "(50% of its step)" in text and "at most 1.33×" in text
    assert "predicts 0.65 s for NWS at 2 ranks; measured 0.80 s" in text
    slower = {"1": {"nws": [80.0], "plain": [160.0]}, "2": {"nws": [40.0], "plain": [160.0]}}
    assert "NWS 0.50× (under the aim; slower than 1 rank: a step takes 2.00× as long)" in bench.full_width_reading(
        slower)


def test_full_width_writes_its_own_section(tmp_path):
    from bench.common import write_section

    path = tmp_path / "BENCHMARKS.md"
    write_section(bench.SECTION, "python -m bench.pretrain", "demo table", path)
    write_section(bench.FULL_SECTION, "python -m bench.pretrain --full-width", "full table", path)
    write_section(bench.FULL_SECTION, "python -m bench.pretrain --full-width", "full table 2", path)
    text = path.read_text()
    assert "demo table" in text and "full table 2" in text and "full table\n" not in text
    assert text.count(bench.SECTION) == 1 and text.count(bench.FULL_SECTION) == 1
