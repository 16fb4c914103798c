"""The rule that keeps one config per run folder, for `nws pipeline run` and the stage commands alike; the folders
themselves (Layout) and the names of the files in them are base.layout's.

The variant rule (issue 19: a second `run_pipeline(cfg, ["incremental.epochs=2"])` overwrote seed0's run, and the
report averaged seeds of two configs). A run whose config differs from the one its folder's runs were made with
(seed<S>/config.yaml; the settings that do not change results, NEUTRAL, left out) is refused, naming the keys that
differ and the two ways on: `--variant NAME` keeps it apart, `--replace` makes it the folder's config (the stages that
read a changed key run again, the others are kept: the pipeline's caching). Refused, not kept apart automatically in
a folder named by a config hash, because the stage commands already refuse a folder of another config (pretraining
checkpoints, the task loop's progress) and the pipeline now does as they do; because a name says what a folder holds
in a listing, a report and the MLflow UI, where a hash does not; and because the usual tuning loop (change a setting,
run again) means to replace, and would otherwise pile up silent copies of the data and the pretraining.
`--replace` and not `--force`: --force reruns every selected stage even when nothing it reads changed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from base.config import ConfigError, resolved
from base.layout import SEED_CONFIG, VARIANTS, Layout
from incremental.config import RESUME_NEUTRAL
from nws.io import atomic_write_bytes
from pipeline import reuse
from pretrain.config import JUDGING_KEYS

# settings that do not change a run's results: the seed list (each seed folder holds one), the incremental settings
# that finished tasks do not depend on and the pretraining health check's
NEUTRAL = {"seeds": None, "incremental": RESUME_NEUTRAL, "pretrain": JUDGING_KEYS}


class VariantConflict(ConfigError):
    """A run of another config than its folder holds (the module docstring's rule); exit 2 like any bad input."""


def pretrain_source(cfg, seed: int, layout: Layout) -> Path:
    """Where a seed's pretrain outputs are read from: its own folder, or the folder `pretrain.reuse` names (a
    relative path under the runs folder, pipeline.reuse)."""
    return reuse.resolve(cfg.pretrain.reuse, layout.runs_dir) if cfg.pretrain.reuse else layout.pretrain(seed)


def seed_config(cfg, seed: int):
    """The config of one seed's run (`seeds: [seed]`) and its resolved data: what seed<S>/config.yaml holds. A copy
    of the validated config, not validated again: a process validates its config once, when it loads it (a stage
    process started by the pipeline loads seed<S>/config.yaml, and validates that once itself)."""
    seeded = cfg.model_copy(update={"seeds": [seed]}, deep=True)
    return seeded, resolved(seeded)


def write_seed_config(layout: Layout, seed: int, data: dict) -> None:
    atomic_write_bytes(layout.config(seed), yaml.safe_dump(data, sort_keys=False).encode())


def comparable(config: dict) -> dict:
    """A resolved config without the NEUTRAL settings: what two runs of one folder must share."""
    out = {k: v for k, v in config.items() if k not in NEUTRAL or NEUTRAL[k] is not None}
    for section, keys in NEUTRAL.items():
        if keys is not None and isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def differences(held: dict, given: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, held value, given value) of every leaf where two configs differ, in key order."""
    found = []
    for key in sorted(set(held) | set(given)):
        a, b = held.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def describe(diffs: list[tuple[str, object, object]], labels: tuple[str, str] = ("there", "here"),
             limit: int = 5) -> str:
    """`key: A there, B here; ...` for the first `limit` differences."""
    shown = [f"{key}: {a!r} {labels[0]}, {b!r} {labels[1]}" for key, a, b in diffs[:limit]]
    return "; ".join(shown) + (f" (and {len(diffs) - limit} more)" if len(diffs) > limit else "")


def held_configs(root: Path) -> dict[Path, dict]:
    """{seed<S>/config.yaml: its config} of the runs in a run folder."""
    found = {}
    for path in sorted(root.glob(f"seed*/{SEED_CONFIG}")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            found[path] = data
    return found


def check_folder(layout: Layout, config: dict, sections: tuple[str, ...] | None = None) -> None:
    """Raise VariantConflict when a run of `config` (resolved) would overwrite or mix with the runs `layout.root`
    holds: a seed config there differs in a setting that changes results (only `sections` compared, when given:
    the data stage reads `data` alone)."""
    given = comparable(config)
    for path, held in held_configs(layout.root).items():
        diffs = differences(*(({k: c.get(k) for k in sections} if sections else c) for c in (comparable(held), given)))
        if diffs:
            raise VariantConflict(
                f"{path} holds a run of another config ({describe(diffs)}); this run would overwrite or mix with "
                f"it. Keep it apart with --variant NAME (its own folder {layout.root / VARIANTS}/NAME) or make it "
                "this folder's config with --replace (the stages that read those keys run again)")
