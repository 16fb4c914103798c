"""Real experiment folders for the report and UI tests: the incremental loop on the tiny digits fixtures of
tests/incremental (2 tasks, 1 short epoch), one run per seed, laid out as `nws pipeline run` lays them out:
<runs>/<name>/seed<S>/incremental/<method>/metrics.json and <runs>/<name>/seed<S>/config.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from incremental.loop import run
from pipeline.config import resolved
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
