"""Real experiment folders for the report and UI tests: the incremental loop on the tiny digits fixtures of
tests/incremental (2 tasks, 1 short epoch), one run per seed, laid out as `nws pipeline run` lays them out:
<runs>/<name>/seed<S>/incremental/<method>/metrics.json and <runs>/<name>/seed<S>/config.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from base.config import resolved
from incremental.loop import run
from tests.incremental.fixtures import make_config, make_pretrain, prepare_digits


def make_experiment(root: Path, seeds=(0, 1), methods=("nws", "finetune"), track: bool = False,
                    runs_dir: Path | None = None) -> Path:
    """Run the loop for every seed and return the experiment folder <root>/runs/<name>."""
    data = prepare_digits(root / "data")
    base = make_config(num_tasks=2, epochs=1, max_steps_per_epoch=3, methods=list(methods), track=track)
    pretrain = make_pretrain(data, root / "pretrain", base, steps=10)
    experiment = root / "runs" / base.name
    for seed in seeds:
        cfg = base.model_copy(update={"seeds": [seed]})
        folder = experiment / f"seed{seed}"
        run(cfg, data, pretrain, folder / "incremental", runs_dir=runs_dir or root / "runs")
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved(cfg), sort_keys=False))
    return experiment


DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# the demo config narrowed to the pretrain outputs make_pretrain trains in seconds
NARROW = ["model.width=0.125", "model.pool_size=16"]


def make_reusable(runs: Path, name: str, *overrides: str) -> Path:
    """Finished pretrain outputs of experiment `name` (configs/demo.yaml + NARROW + `overrides`) where the pipeline
    puts them, <runs>/<name>/seed0/pretrain: make_pretrain's pools, base model and plain backbone, with the resolved
    config (config.json) that pretrain/run.py writes first, and pretrain.json and the `complete` mark it writes
    last (from per-kind summaries that say where they come from)."""
    from base.config import load_config
    from nws.io import atomic_write_json
    from pipeline.config import experiment_schema
    from pretrain import outputs

    cfg = load_config(experiment_schema(), DEMO, [f"name={name}", *NARROW, *overrides])
    out = runs / name / "seed0" / "pretrain"
    make_pretrain(prepare_digits(runs.parent / f"{name}-data"), out, cfg, steps=5)
    atomic_write_json(out / "config.json", resolved(cfg))
    for kind in cfg.pretrain.kinds():
        atomic_write_json(outputs.kind_summary_path(out, kind), {"config_hash": "test", "kind": kind,
                                                                 "made_by": "tests.pipeline.fixtures.make_pretrain"})
    outputs.write_summary(out, cfg.pretrain.kinds(), "test", {})
    return out
